# Stand-in for pkgs.path (the nixpkgs source tree the channel is copied from).
{ }: { }
