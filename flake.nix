{
  description = "make-disk-image: NixOS disk images without a VM, a drop-in for nixpkgs' make-disk-image.nix";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: {
        default = pkgs.callPackage ./package.nix { };
        make-disk-image = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      });

      overlays.default = final: prev: { make-disk-image = final.callPackage ./package.nix { }; };

      # Same arguments as nixpkgs' nixos/lib/make-disk-image.nix:
      #   make-disk-image.lib.makeDiskImage { inherit config lib pkgs; format = "qcow2"; }
      # The program is built with the caller's pkgs (pkgs.buildPackages) unless
      # `makeDiskImage` is given.
      lib.makeDiskImage = import ./nix/make-disk-image.nix;
    };
}
