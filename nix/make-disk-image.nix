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
# (channel), OVMF (touchEFIVars), grub2 (GRUB), stdenv.hostPlatform.efiArch, postVM's tools
# where pkgs has them, and buildPackages.callPackage or make-disk-image (the default
# makeDiskImage). Every boot.loader option is passed on or refused by name:
# docs/boot-loader-options.md.
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
  # The make-disk-image package (built for the build platform): from package.nix beside
  # this file's folder in make-disk-image's source tree; elsewhere (this file placed in
  # nixpkgs as nixos/lib/make-disk-image.nix) the package of that name in pkgs.
  makeDiskImage ?
    if builtins.pathExists ../package.nix then
      pkgs.buildPackages.callPackage ../package.nix { }
    else
      pkgs.buildPackages.make-disk-image or pkgs.make-disk-image or (throw
        "make-disk-image: the make-disk-image program is not found: there is no ${toString ../package.nix} (this file is not in make-disk-image's source tree) and pkgs has no make-disk-image package; add the package to pkgs (pkgs/by-name in nixpkgs; an overlay is not seen by callers that re-import nixpkgs, like openstack's image) or pass makeDiskImage = <the package> (make-disk-image's flake: packages.<system>.default)"
      ),
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
  #
  # Every boot.loader option that changes what NixOS' installer (install-grub.pl,
  # systemd-boot-builder.py, extlinux-conf-builder.sh) writes is either passed on
  # (grubOptions, systemdBootOptions, extlinuxOptions, bootTimeout, canTouchEfiVariables)
  # or refused by name below: docs/boot-loader-options.md lists them one by one.
  loader = config.boot.loader or { };
  enabled = n: (loader.${n}.enable or false) == true;
  efiArch = pkgs.stdenv.hostPlatform.efiArch or "x64";
  hostSystem = pkgs.stdenv.hostPlatform.system or null;
  buildSystem = pkgs.stdenv.buildPlatform.system or hostSystem;
  cross = hostSystem != null && buildSystem != hostSystem;
  # PC machines have a BIOS; elsewhere NixOS' GRUB has no grubTarget, only EFI.
  pcHost = builtins.elem (if hostSystem == null then "x86_64-linux" else hostSystem) [
    "x86_64-linux"
    "i686-linux"
  ];

  # The options, over NixOS' defaults (a configuration evaluated by NixOS has them all;
  # the defaults matter for hand-made configs).
  grub =
    {
      devices = [ ];
      mirroredBoots = [ ];
      efiSupport = false;
      efiInstallAsRemovable = false;
      forcei686 = false;
      zfsSupport = false;
      extraConfig = "";
      extraEntries = "";
      extraEntriesBeforeNixOS = false;
      extraPerEntryConfig = "";
      extraFiles = { };
      default = "0";
      configurationLimit = 100;
      timeoutStyle = "menu";
      entryOptions = "--class nixos --unrestricted";
      subEntryOptions = "--class nixos";
      copyKernels = false;
      users = { };
      theme = null;
      font = null;
      fontSize = null;
      splashImage = null;
      backgroundColor = null;
      gfxmodeEfi = "auto";
      gfxmodeBios = "1024x768";
      gfxpayloadEfi = "keep";
      gfxpayloadBios = "text";
      useOSProber = false;
      extraPrepareConfig = "";
      extraInstallCommands = "";
      extraGrubInstallArgs = [ ];
      enableCryptodisk = false;
      fsIdentifier = "uuid";
      storePath = "/nix/store";
    }
    // (loader.grub or { });
  sdBoot =
    {
      editor = true;
      consoleMode = "keep";
      rebootForBitlocker = false;
      extraEntries = { };
      extraFiles = { };
      extraEfiDrivers = { };
      extraInstallCommands = "";
      installDeviceTree = false;
      xbootldrMountPoint = null;
    }
    // (loader.systemd-boot or { });
  extlinux =
    {
      configurationLimit = 20;
      useGenerationDeviceTree = true;
    }
    // (loader.generic-extlinux-compatible or { });
  efiOpts =
    {
      canTouchEfiVariables = false;
      efiSysMountPoint = "/boot";
    }
    // (loader.efi or { });

  # Where the layout mounts the ESP (as nixpkgs' builder does), and whether it has room
  # for GRUB's BIOS boot code.
  layoutEsp =
    {
      efi = "/boot";
      hybrid = "/boot";
      efixbootldr = "/efi";
    }
    .${partitionTableType} or null;
  layoutBios = builtins.elem partitionTableType [
    "legacy"
    "legacy+boot"
    "legacy+gpt"
    "hybrid"
  ];
  # grub.nix: devices fill the one mirroredBoots entry (path /boot) unless mirroredBoots is given.
  grubDevices = if grub.mirroredBoots != [ ] then (builtins.head grub.mirroredBoots).devices or [ ] else grub.devices;
  grubNodev = grubDevices == [ "nodev" ];
  # install-grub.pl's platforms: BIOS unless nodev (or no PC BIOS), EFI with efiSupport.
  grubBios = !grubNodev && pcHost;
  grubEfiWanted = grub.efiSupport;
  # grub.nix: bootloaderId = "${distroName}${efiSysMountPoint with / as -}" unless the
  # mirroredBoots entry names one.
  grubBootloaderId =
    let
      given = if grub.mirroredBoots != [ ] then (builtins.head grub.mirroredBoots).efiBootloaderId or null else null;
    in
    if given != null then
      given
    else
      (config.system.nixos.distroName or "NixOS") + builtins.replaceStrings [ "/" ] [ "-" ] efiOpts.efiSysMountPoint;

  grubPkgs = if grub.forcei686 then pkgs.pkgsi686Linux else pkgs;
  realGrub =
    if grub.zfsSupport then
      grubPkgs.grub2.override {
        zfsSupport = true;
        zfs = grub.zfsPackage;
      }
    else
      grubPkgs.grub2;
  grubBiosPkg =
    if (config.system.build.grub or null) != null then config.system.build.grub else realGrub;
  grubEfi = realGrub.override { efiSupport = true; };
  grubEfiTarget =
    if grub.forcei686 then
      "i386-efi"
    else
      {
        "x86_64-linux" = "x86_64-efi";
        "i686-linux" = "i386-efi";
        "aarch64-linux" = "arm64-efi";
        "riscv64-linux" = "riscv64-efi";
      }
      .${if hostSystem == null then "x86_64-linux" else hostSystem} or "x86_64-efi";
  # Only the builds the installed platforms need: linode's partitionTableType "none" with
  # devices = [ "nodev" ] and no efiSupport needs none (grub.cfg only), hybrid without
  # efiSupport only the BIOS one.
  needBios = grubBios && layoutBios;
  needEfi = grubEfiWanted && layoutEsp != null;
  grubMkimageFrom =
    if cross then pkgs.buildPackages.grub2 else if needBios then grubBiosPkg else grubEfi;
  grubModules =
    if needBios && needEfi then
      # Both platforms come from two builds: one folder holding both module folders.
      "${pkgs.runCommand "grub-modules" { } ''
        mkdir -p $out
        ln -s ${grubBiosPkg}/lib/grub/i386-pc $out/i386-pc
        ln -s ${grubEfi}/lib/grub/${grubEfiTarget} $out/${grubEfiTarget}
      ''}"
    else
      "${if needBios then grubBiosPkg else grubEfi}/lib/grub";

  # Refusals: the first option set to something this builder cannot make as NixOS would.
  refuse =
    opt: why:
    throw "make-disk-image: boot.loader.${opt} is set, which ${why}; unset it or use nixpkgs' builder";
  firstRefusal = checks: builtins.foldl' (acc: c: if acc == null && c.bad then c else acc) null checks;
  # A check with `msg` says the whole sentence (a value the layout cannot take).
  orRefuse =
    checks: v:
    let
      r = firstRefusal checks;
    in
    if r == null then
      v
    else if r ? msg then
      throw "make-disk-image: boot.loader.${r.opt} ${r.msg}"
    else
      refuse r.opt r.why;
  str = toString;
  # An option of type path, as NixOS' modules interpolate it: a local path is copied to the
  # store (the build reads only the store).
  storePathOf = v: "${v}";
  # extraPrepareConfig is refused unless all it holds is grub.nix's copying of extraFiles
  # (each line names a source and a target of extraFiles: the module's own, in any of its
  # versions' spellings), which extraFiles does natively.
  fromExtraFiles =
    line:
    builtins.any (
      n:
      let
        # grub.nix names it by toString (escapeShellArg) or, in older versions, "${v}".
        has = src: builtins.replaceStrings [ src ] [ "" ] line != line;
      in
      has (str grub.extraFiles.${n}) || has (storePathOf grub.extraFiles.${n})
    ) (builtins.attrNames grub.extraFiles);
  prepareLines = builtins.filter (l: builtins.isString l && builtins.match "[[:space:]]*" l == null) (
    builtins.split "\n" grub.extraPrepareConfig
  );
  defaultFont = f: builtins.match ".*/share/grub/unicode\\.pf2" (str f) != null;
  defaultSplash = f: builtins.match ".*/nix-wallpaper-simple-dark-gray_bootloader\\.png" (str f) != null;
  cannotGraphics = "changes GRUB's graphical menu, which this builder does not draw (its grub.cfg is a text menu)";
  grubChecks = [
    {
      opt = "grub.users";
      bad = grub.users != { };
      why = "puts GRUB users and password checks into grub.cfg, which this builder cannot write";
    }
    {
      opt = "grub.theme";
      bad = grub.theme != null;
      why = cannotGraphics;
    }
    {
      opt = "grub.splashImage";
      bad = grub.splashImage != null && !defaultSplash grub.splashImage;
      why = cannotGraphics;
    }
    {
      opt = "grub.font";
      bad = grub.font != null && !defaultFont grub.font;
      why = cannotGraphics;
    }
    {
      opt = "grub.fontSize";
      bad = grub.fontSize != null;
      why = cannotGraphics;
    }
    {
      opt = "grub.backgroundColor";
      bad = !builtins.elem grub.backgroundColor [ null "#2F302F" ];
      why = cannotGraphics;
    }
    {
      opt = "grub.gfxmodeEfi";
      bad = grub.gfxmodeEfi != "auto";
      why = cannotGraphics;
    }
    {
      opt = "grub.gfxmodeBios";
      bad = grub.gfxmodeBios != "1024x768";
      why = cannotGraphics;
    }
    {
      opt = "grub.gfxpayloadEfi";
      bad = grub.gfxpayloadEfi != "keep";
      why = cannotGraphics;
    }
    {
      opt = "grub.gfxpayloadBios";
      bad = grub.gfxpayloadBios != "text";
      why = cannotGraphics;
    }
    {
      opt = "grub.useOSProber";
      bad = grub.useOSProber;
      why = "adds entries for the operating systems os-prober finds on the installing machine, which a build has none of";
    }
    {
      opt = "grub.mirroredBoots";
      bad =
        builtins.length grub.mirroredBoots > 1
        || (grub.mirroredBoots != [ ] && (builtins.head grub.mirroredBoots).path or "/boot" != "/boot");
      why = "puts /boot on several partitions (or elsewhere than /boot), which the image layouts cannot have";
    }
    {
      opt = "grub.extraPrepareConfig";
      bad = !builtins.all fromExtraFiles prepareLines;
      why = "is a shell script NixOS runs on the installed machine, which cannot run in this builder";
    }
    {
      opt = "grub.extraInstallCommands";
      bad = grub.extraInstallCommands != "";
      why = "is a shell script NixOS runs on the installed machine, which cannot run in this builder";
    }
    {
      opt = "grub.extraGrubInstallArgs";
      bad = grub.extraGrubInstallArgs != [ ];
      why = "changes the images grub-install makes, which this builder makes with grub-mkimage and its own module list";
    }
    {
      opt = "grub.enableCryptodisk";
      bad = grub.enableCryptodisk;
      why = "adds GRUB's cryptodisk support to its images, which this builder cannot";
    }
    {
      opt = "grub.fsIdentifier";
      bad = grub.fsIdentifier != "uuid";
      why = "makes grub.cfg find /boot by label or device name, which this builder cannot (it searches by UUID)";
    }
    {
      opt = "grub.storePath";
      bad = grub.storePath != "/nix/store";
      why = "moves the store GRUB reads kernels from, which this builder cannot";
    }
    {
      opt = "grub.default";
      bad = str grub.default == "saved";
      msg = "is \"saved\", which needs GRUB's environment block (grubenv), which this builder cannot write; give an index or an entry title, or use nixpkgs' builder";
    }
    # Platforms the layout has no place for: NixOS' installer would fail there too.
    {
      opt = "grub.efiSupport";
      bad = grubEfiWanted && layoutEsp == null;
      msg = "is true, but partitionTableType \"${partitionTableType}\" has no EFI system partition for EFI GRUB (NixOS' grub-install --efi-directory would fail there); use partitionTableType efi, efixbootldr or hybrid, or set it to false";
    }
    {
      opt = "grub.devices";
      bad = grubBios && !layoutBios;
      msg = "is [ ${builtins.concatStringsSep " " grubDevices} ], which asks for GRUB's BIOS boot code, but partitionTableType \"${partitionTableType}\" has no room for it (${
        if partitionTableType == "none" then "no partition table" else "no BIOS boot partition"
      }); set it to [ \"nodev\" ] (with efiSupport = true for UEFI) or use partitionTableType legacy, legacy+boot, legacy+gpt or hybrid";
    }
    {
      opt = "efi.efiSysMountPoint";
      bad = grubEfiWanted && layoutEsp != null && efiOpts.efiSysMountPoint != layoutEsp;
      msg = "is \"${efiOpts.efiSysMountPoint}\", but partitionTableType \"${partitionTableType}\" mounts the ESP at ${str layoutEsp} (as nixpkgs' builder does), where grub-install would not find it; set it to \"${str layoutEsp}\"";
    }
  ];
  sdChecks = [
    {
      opt = "systemd-boot.extraInstallCommands";
      bad = sdBoot.extraInstallCommands != "";
      why = "is a shell script NixOS runs on the installed machine, which cannot run in this builder";
    }
    {
      opt = "systemd-boot.extraEfiDrivers";
      bad = sdBoot.extraEfiDrivers != { };
      why = "copies EFI drivers to the ESP, which this builder cannot do yet";
    }
    {
      opt = "systemd-boot.installDeviceTree";
      bad = sdBoot.installDeviceTree;
      why = "copies the device tree to the ESP and names it in the entries, which this builder cannot do yet";
    }
    {
      opt = "efi.efiSysMountPoint";
      bad = layoutEsp != null && efiOpts.efiSysMountPoint != layoutEsp;
      msg = "is \"${efiOpts.efiSysMountPoint}\", but partitionTableType \"${partitionTableType}\" mounts the ESP at ${str layoutEsp} (as nixpkgs' builder does), where bootctl would not find it; set it to \"${str layoutEsp}\"";
    }
    {
      opt = "systemd-boot.xbootldrMountPoint";
      bad = sdBoot.xbootldrMountPoint != (if partitionTableType == "efixbootldr" then "/boot" else null);
      msg = "is ${
        if sdBoot.xbootldrMountPoint == null then "null" else "\"${sdBoot.xbootldrMountPoint}\""
      }, but partitionTableType \"${partitionTableType}\" ${
        if partitionTableType == "efixbootldr" then "mounts XBOOTLDR at /boot" else "has no XBOOTLDR partition"
      }; set it to ${if partitionTableType == "efixbootldr" then "\"/boot\"" else "null"}";
    }
  ];
  # Loaders that need more than files, or their own installer.
  unsupported = builtins.filter enabled [
    "limine"
    "refind"
    "external"
    "initScript"
  ];
  installing = !onlyNixStore && installBootLoader;
  bootLoaderKeys =
    if !installing then
      { installBootLoader = false; }
    else if unsupported != [ ] then
      throw "make-disk-image: boot.loader.${builtins.head unsupported} cannot be installed without a VM; use systemd-boot, GRUB or generic-extlinux-compatible, or installBootLoader = false"
    else if enabled "systemd-boot" then
      orRefuse sdChecks {
        installBootLoader = true;
        bootLoader = "systemd-boot";
        systemdBoot = "${config.systemd.package}/lib/systemd/boot/efi/systemd-boot${efiArch}.efi";
        systemdBootOptions = {
          inherit (sdBoot) editor consoleMode rebootForBitlocker extraEntries;
          extraFiles = builtins.mapAttrs (_: storePathOf) sdBoot.extraFiles;
        };
      }
    else if enabled "grub" then
      orRefuse grubChecks (
        {
          installBootLoader = true;
          bootLoader = "grub";
          grubOptions = {
            inherit (grub)
              extraConfig
              extraEntries
              extraEntriesBeforeNixOS
              extraPerEntryConfig
              configurationLimit
              timeoutStyle
              copyKernels
              efiInstallAsRemovable
              ;
            default = str grub.default;
            entryOptions = if grub.entryOptions == null then "" else grub.entryOptions;
            subEntryOptions = if grub.subEntryOptions == null then "" else grub.subEntryOptions;
            extraFiles = builtins.mapAttrs (_: storePathOf) grub.extraFiles;
            efiSupport = grubEfiWanted;
            nodev = !grubBios;
            bootloaderId = grubBootloaderId;
          };
        }
        // optAttrs (needBios || needEfi) {
          grub = grubModules;
          grubMkimage = "${grubMkimageFrom}/bin/grub-mkimage";
        }
        // optAttrs grub.forcei686 { grubForceI686 = true; }
      )
    else if enabled "generic-extlinux-compatible" then
      {
        installBootLoader = true;
        bootLoader = "extlinux";
        extlinuxOptions = {
          inherit (extlinux) configurationLimit useGenerationDeviceTree;
        }
        // optAttrs ((config.hardware.deviceTree.name or null) != null) { dtbName = config.hardware.deviceTree.name; };
      }
    else
      # No boot loader enabled: NixOS would install none either.
      { installBootLoader = false; };
  # boot.loader.timeout (null = wait for a key: -1, as grub.nix passes it; systemd-boot
  # writes menu-force, extlinux TIMEOUT 0) and boot.loader.efi.canTouchEfiVariables
  # (whether touchEFIVars' store gets the loader's Boot#### entry).
  bootTimeoutKeys = optAttrs (bootLoaderKeys.installBootLoader or false) {
    bootTimeout = if (loader.timeout or 5) == null then -1 else loader.timeout or 5;
    canTouchEfiVariables = efiOpts.canTouchEfiVariables;
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
  postVMTools = builtins.filter (p: p != null) [
    (pkgs.util-linux or null)
    (pkgs.parted or null)
    (pkgs.e2fsprogs or null)
    (pkgs.dosfstools or null)
    (pkgs.mtools or null)
    (pkgs.qemu-utils or null)
    (pkgs.gptfdisk or null)
    (pkgs.rsync or null)
  ];
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
  (
  {
    specJSON = builtins.toJSON spec;
    passAsFile = [ "specJSON" ];
    passthru = {
      inherit spec closureInfo makeDiskImage;
    };
  }
  # postVM's tools: what nixpkgs' builder had on PATH when postVM ran (its binPath and
  # buildInputs, and qemu-img), each where pkgs has it.
  // optAttrs (postVM != "") { nativeBuildInputs = postVMTools; }
  )
  (
    ''
      ${makeDiskImage}/bin/make-disk-image build "$specJSONPath" -o "$out"
    ''
    + (if postVM != "" then postVMScript else "")
  )
