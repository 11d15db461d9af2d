# The make-disk-image program, built with nixpkgs' Rust toolchain.
#   pkgs.callPackage ./package.nix { }
{ lib, rustPlatform }:
let
  workspace = (lib.importTOML ./Cargo.toml).workspace.package;
in
rustPlatform.buildRustPackage {
  pname = "make-disk-image";
  inherit (workspace) version;
  src = lib.fileset.toSource {
    root = ./.;
    fileset = lib.fileset.unions [
      ./Cargo.toml
      ./Cargo.lock
      ./crates
    ];
  };
  cargoLock.lockFile = ./Cargo.lock;
  cargoBuildFlags = [ "--package" "make-disk-image" ];
  # The test suite needs root (loop mounts), the kernel and real tools (e2fsck, nix-store,
  # qemu-img, ...): it runs in CI (scripts/test.sh), not in the sandbox.
  doCheck = false;
  meta = {
    description = "Build NixOS disk images without a VM, without root, reproducibly";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "make-disk-image";
    platforms = lib.platforms.linux;
  };
}
