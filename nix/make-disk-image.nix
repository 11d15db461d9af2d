# A drop-in replacement for nixpkgs' nixos/lib/make-disk-image.nix.
#
#   import ./nix/make-disk-image.nix { inherit pkgs lib config; format = "qcow2"; ... }
#
# Same arguments, defaults and assertions as nixpkgs' function (the arguments and the spec
# keys they become: docs/spec.md), and the same kind of $out
# (<baseName>.<ext>, efi-vars.fd, nix-support/hydra-build-products), plus our manifest.json.
# The image is made in one ordinary derivation: the closureInfo of the system (+ channel
# + additionalPaths), a JSON spec, one run of the make-disk-image program. No VM, no KVM,
# no requiredSystemFeatures; memSize is accepted and ignored.
#
# From `lib` only assertMsg, assertOneOf (so the assertion messages are nixpkgs' own) and
# cleanSource (the channel) are used; from `pkgs` only runCommand, closureInfo, path
# (channel), OVMF (touchEFIVars), grub2 (GRUB), stdenv.hostPlatform.efiArch and
# buildPackages.callPackage (the default makeDiskImage).
args@{
  pkgs,
  lib,
  # The evaluated NixOS configuration.
  config,
  # "auto", or the disk size in MiB.
  diskSize ? "auto",
  # Added when diskSize = "auto".
  additionalSpace ? "512M",
  # End offset of the boot partition (efi, efixbootldr, hybrid, legacy+boot).
  bootSize ? "256M",
  # [ { source; target; mode?; user?; group?; } ]
  contents ? [ ],
  partitionTableType ? "legacy",
  installBootLoader ? true,
  touchEFIVars ? false,
  OVMF ? pkgs.OVMF.fd,
  # Accepted for compatibility: there is no VM to boot it in.
  efiFirmware ? OVMF.firmware,
  efiVariables ? OVMF.variables,
  fsType ? "ext4",
  label ? if onlyNixStore then "nix-store" else "nixos",
  configFile ? null,
  # Shell run in the builder after the image is made (see below).
  postVM ? "",
  # Accepted for compatibility and ignored: there is no VM.
  memSize ? 1024,
  onlyNixStore ? false,
  name ? "nixos-disk-image",
  format ? "raw",
  baseName ? "nixos",
  deterministic ? true,
  rootGPUID ? "F222513B-DED1-49FA-B591-20CE86A2FE7F",
  rootFSUID ? (if fsType == "ext4" then rootGPUID else null),
  copyChannel ? true,
  additionalPaths ? [ ],

  # Beyond nixpkgs' arguments.
  # The make-disk-image package (built for the build platform).
  makeDiskImage ? pkgs.buildPackages.callPackage ../package.nix { },
  # Format options, e.g. { subformat = "fixed"; } for vpc (Azure) or
  # { compression = "zstd"; } for qcow2-compressed.
  formatOptions ? { },
  # Seed of every GUID/UUID/serial not given explicitly (null: the program's fixed default).
  seed ? null,
  # Every timestamp written (null: the builder's SOURCE_DATE_EPOCH, else 1).
  sourceDateEpoch ? null,
}:
assert (
  lib.assertOneOf "partitionTableType" partitionTableType [
    "legacy"
    "legacy+boot"
    "legacy+gpt"
    "efi"
    "efixbootldr"
    "hybrid"
    "none"
  ]
);
assert (
  lib.assertMsg (fsType == "ext4" && deterministic -> rootFSUID != null)
    "In deterministic mode with a ext4 partition, rootFSUID must be non-null, by default, it is equal to rootGPUID."
);
assert (
  lib.assertMsg (partitionTableType != "none" -> fsType == "ext4")
    "to produce a partition table, we need to use -E offset flag which is support only for fsType = ext4"
);
assert (
  lib.assertMsg (
    touchEFIVars
    -> builtins.elem partitionTableType [
      "hybrid"
      "efi"
      "efixbootldr"
      "legacy+gpt"
    ]
  ) "EFI variables can be used only with a partition table of type: hybrid, efi, efixbootldr, or legacy+gpt."
);
assert (
  lib.assertMsg (onlyNixStore -> contents == [ ] && configFile == null && !installBootLoader)
    "In a only Nix store image, the contents must be empty, no configuration must be provided and no bootloader should be installed."
);
assert (
  lib.assertMsg (builtins.all (c: ((c.user or null) == null) == ((c.group or null) == null)) contents)
    "Contents of the disk image should set none of {user, group} or both at the same time."
);
let
  optAttrs = cond: attrs: if cond then attrs else { };
  toplevel = config.system.build.toplevel;

  # nixpkgs' file names: qcow2-compressed is a qcow2, vpc a .vhd, raw an .img, any other
  # format its own name.
  format' = if format == "qcow2-compressed" then "qcow2" else format;
  filename =
    "${baseName}."
    + (
      {
        qcow2 = "qcow2";
        vdi = "vdi";
        vpc = "vhd";
        raw = "img";
      }
      .${format'} or format'
    );

  # The channel nixpkgs puts in the image: a cleaned copy of pkgs.path as nixos/, with a
  # nixpkgs -> . link and the version suffix.
  channelSources = pkgs.runCommand "nixos-${config.system.nixos.version}" { } ''
    mkdir -p $out
    cp -prd ${lib.cleanSource pkgs.path} $out/nixos
    chmod -R u+w $out/nixos
    if [ ! -e $out/nixos/nixpkgs ]; then
      ln -s . $out/nixos/nixpkgs
    fi
    rm -rf $out/nixos/.git
    printf '%s' '${config.system.nixos.versionSuffix}' > $out/nixos/.version-suffix
  '';

  basePaths = [ toplevel ] ++ (if copyChannel then [ channelSources ] else [ ]);
  basePathStrings = map toString basePaths;
  additionalPaths' = builtins.filter (p: !builtins.elem (toString p) basePathStrings) additionalPaths;
  closureInfo = pkgs.closureInfo { rootPaths = basePaths ++ additionalPaths'; };

  # contents: user and group names resolve through config.users where the configuration
  # fixes the id (users.users.<n>.uid, users.groups.<n>.gid); other names go to the
  # program as they are.
  users = config.users or { };
  idOf =
    kind: attr: v:
    if builtins.isString v && (users.${kind}.${v}.${attr} or null) != null then users.${kind}.${v}.${attr} else v;
  # A source with '*' is a pattern: the program expands it as nixpkgs' shell does, its
  # matches going into the target folder. (Gathering them in the build directory first
  # would put that folder's name, which another concurrent build can change, in
  # manifest.json.)
  contentEntry =
    c:
    {
      source = "${c.source}";
      inherit (c) target;
    }
    // optAttrs ((c.mode or null) != null) { inherit (c) mode; }
    // optAttrs ((c.user or null) != null) {
      user = idOf "users" "uid" c.user;
      group = idOf "groups" "gid" c.group;
    };

  # The boot loader and its inputs, from config.boot.loader. systemd-boot: its EFI binary
  # from config.systemd.package (what bootctl installs). GRUB: the package NixOS' grub
  # module uses (config.system.build.grub: pkgs.grub2, built with ZFS support when
  # boot.loader.grub.zfsSupport; null for devices = [ "nodev" ]) for the i386-pc modules,
  # and its efiSupport build for the target's EFI modules (x86_64-efi, i386-efi with
  # forcei686, arm64-efi, riscv64-efi). grub-mkimage runs on the build machine: when the
  # target is another architecture it comes from pkgs.buildPackages (it writes images for
  # any target from that target's module folder). generic-extlinux-compatible writes
  # /boot/extlinux/extlinux.conf for U-Boot.
  loader = config.boot.loader or { };
  enabled = n: (loader.${n}.enable or false) == true;
  efiArch = pkgs.stdenv.hostPlatform.efiArch or "x64";
  hostSystem = pkgs.stdenv.hostPlatform.system or null;
  buildSystem = pkgs.stdenv.buildPlatform.system or hostSystem;
  cross = hostSystem != null && buildSystem != hostSystem;
  grub = loader.grub or { };
  needBios = builtins.elem partitionTableType [
    "legacy"
    "legacy+boot"
    "legacy+gpt"
    "hybrid"
  ];
  needEfi = builtins.elem partitionTableType [
    "efi"
    "efixbootldr"
    "hybrid"
  ];
  grubPkgs = if grub.forcei686 or false then pkgs.pkgsi686Linux else pkgs;
  realGrub =
    if grub.zfsSupport or false then
      grubPkgs.grub2.override {
        zfsSupport = true;
        zfs = grub.zfsPackage;
      }
    else
      grubPkgs.grub2;
  grubBios =
    if (config.system.build.grub or null) != null then config.system.build.grub else realGrub;
  grubEfi = realGrub.override { efiSupport = true; };
  grubEfiTarget =
    if grub.forcei686 or false then
      "i386-efi"
    else
      {
        "x86_64-linux" = "x86_64-efi";
        "i686-linux" = "i386-efi";
        "aarch64-linux" = "arm64-efi";
        "riscv64-linux" = "riscv64-efi";
      }
      .${if hostSystem == null then "x86_64-linux" else hostSystem} or "x86_64-efi";
  grubMkimageFrom =
    if cross then pkgs.buildPackages.grub2 else if needBios then grubBios else grubEfi;
  grubModules =
    if needBios && needEfi then
      # Both platforms come from two builds: one folder holding both module folders.
      "${pkgs.runCommand "grub-modules" { } ''
        mkdir -p $out
        ln -s ${grubBios}/lib/grub/i386-pc $out/i386-pc
        ln -s ${grubEfi}/lib/grub/${grubEfiTarget} $out/${grubEfiTarget}
      ''}"
    else
      "${if needBios then grubBios else grubEfi}/lib/grub";
  unsupported = builtins.filter enabled [
    "limine"
    "refind"
  ];
  bootLoaderKeys =
    if onlyNixStore || !installBootLoader then
      { installBootLoader = false; }
    else if enabled "systemd-boot" then
      {
        installBootLoader = true;
        bootLoader = "systemd-boot";
        systemdBoot = "${config.systemd.package}/lib/systemd/boot/efi/systemd-boot${efiArch}.efi";
      }
    else if enabled "grub" then
      {
        installBootLoader = true;
        bootLoader = "grub";
        grub = grubModules;
        grubMkimage = "${grubMkimageFrom}/bin/grub-mkimage";
      }
      // optAttrs (grub.forcei686 or false) { grubForceI686 = true; }
    else if enabled "generic-extlinux-compatible" then
      {
        installBootLoader = true;
        bootLoader = "extlinux";
      }
    else if unsupported != [ ] then
      throw "make-disk-image: boot.loader.${builtins.head unsupported} cannot be installed without a VM; use systemd-boot, GRUB or generic-extlinux-compatible, or installBootLoader = false"
    else
      # No boot loader enabled: NixOS would install none either.
      { installBootLoader = false; };
  # boot.loader.timeout (null = wait for a key, which a spec cannot say: keep the default).
  bootTimeoutKeys = optAttrs ((bootLoaderKeys.installBootLoader or false) && (loader.timeout or null) != null) {
    bootTimeout = loader.timeout;
  };

  # The spec (docs/design.md §2.2): nixpkgs' argument names, store paths as strings.
  spec =
    {
      inherit
        format
        partitionTableType
        diskSize
        additionalSpace
        bootSize
        fsType
        label
        onlyNixStore
        baseName
        deterministic
        rootGPUID
        touchEFIVars
        ;
      closureInfo = "${closureInfo}";
      contents = map contentEntry contents;
    }
    # nixpkgs never sets the UUID of a store-only image (no tune2fs without the VM): unless
    # asked for, it gets a seed-derived one rather than the root image's default, so that a
    # VM with both disks does not see two filesystems with one UUID.
    // optAttrs (rootFSUID != null && (!onlyNixStore || args ? rootFSUID)) { inherit rootFSUID; }
    // optAttrs (!onlyNixStore) { system = "${toplevel}"; }
    # The target's architecture, which the program checks against the system's bootspec.
    // optAttrs (!onlyNixStore && hostSystem != null) { targetSystem = hostSystem; }
    // optAttrs (configFile != null) { configFile = "${configFile}"; }
    // optAttrs (copyChannel && !onlyNixStore) {
      copyChannel = true;
      channel = "${channelSources}";
    }
    // optAttrs (additionalPaths' != [ ]) { additionalPaths = map toString additionalPaths'; }
    // optAttrs touchEFIVars { efiVariables = "${efiVariables}"; }
    // optAttrs (formatOptions != { }) { inherit formatOptions; }
    // optAttrs (seed != null) { inherit seed; }
    // optAttrs (sourceDateEpoch != null) { inherit sourceDateEpoch; }
    // bootLoaderKeys
    // bootTimeoutKeys;

  # postVM runs here, in the builder's shell, once the program has written $out (and
  # never in the program: the spec has no postVM). It sees what nixpkgs' postVM sees that
  # still makes sense without a VM: $out, $diskImage, $efiVars, $bootSize (bytes, rounded
  # up to a MiB as our layouts do), $bootSizeMiB, and nixpkgs' helper functions.
  postVMScript = ''
    diskImage=$out/${filename}
    ${if touchEFIVars then "efiVars=$out/efi-vars.fd" else ""}
    mebibyte=$(( 1024 * 1024 ))
    sectorsToKilobytes() { echo $(( ( "$1" * 512 ) / 1024 )); }
    sectorsToBytes() { echo $(( "$1" * 512 )); }
    sum_lines() { local acc=0; while read -r number; do acc=$((acc+number)); done; echo "$acc"; }
    compute_fudge() { echo $(( $1 * 52 / 1000 )); }
    round_to_nearest() { echo $(( ( $1 / $2 + 1) * $2 )); }
    bootSize=$(( ( $(numfmt --from=iec '${bootSize}') + mebibyte - 1 ) / mebibyte * mebibyte ))
    bootSizeMiB=$(( bootSize / mebibyte ))MiB
    ${postVM}
  '';
in
pkgs.runCommand name
  {
    specJSON = builtins.toJSON spec;
    passAsFile = [ "specJSON" ];
    passthru = {
      inherit spec closureInfo makeDiskImage;
    };
  }
  (
    ''
      ${makeDiskImage}/bin/make-disk-image build "$specJSONPath" -o "$out"
    ''
    + (if postVM != "" then postVMScript else "")
  )
