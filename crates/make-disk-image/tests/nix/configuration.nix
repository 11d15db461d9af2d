# Stand-in configFile: lands at /etc/nixos/configuration.nix in the full image.
{ ... }: { boot.loader.grub.devices = [ "/dev/vda" ]; }
