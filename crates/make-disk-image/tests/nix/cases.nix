# What tests/nix_function.rs evaluates and builds: our nix/make-disk-image.nix called as
# NixOS users call nixpkgs' function, with the stand-in pkgs/lib/config of stand-in.nix.
{
  mdiBin,
  # A copy of nix/make-disk-image.nix placed as <tree>/nixos/lib/make-disk-image.nix (by the
  # test), for inNixpkgs.
  nixpkgsTreeFile ? null,
}:
let
  s = import ./stand-in.nix { inherit mdiBin; };
  mdi =
    args:
    import ../../../../nix/make-disk-image.nix (
      {
        inherit (s) pkgs lib config makeDiskImage;
      }
      // args
    );
in
rec {
  inherit (s) toplevel extra hello;

  # nixpkgs' store image (qemu-vm's useNixStoreImage, make-disk-image's onlyNixStore).
  storeOnly = mdi {
    onlyNixStore = true;
    partitionTableType = "none";
    installBootLoader = false;
    copyChannel = false;
    additionalPaths = [ s.extra ];
    baseName = "store";
    additionalSpace = "8M";
  };

  # A full image of the stand-in system, without a boot loader (the cases below have one).
  full = mdi {
    installBootLoader = false;
    additionalSpace = "16M";
    configFile = ./configuration.nix;
    additionalPaths = [
      s.extra
      s.toplevel
    ];
    contents = [
      {
        source = "${s.hello}/share/doc/README";
        target = "/etc/motd";
        mode = "0640";
        user = "alice";
        group = "staff";
      }
      {
        source = s.greeter;
        target = "/opt/greeter";
        user = "root";
        group = "root";
      }
      {
        source = "${s.hello}/share/doc/*";
        target = "/usr/share/doc/hello";
      }
      {
        source = ./configuration.nix;
        target = "/etc/fixture.nix";
        mode = "0600";
      }
    ];
    postVM = ''
      test -f "$diskImage"
      echo "$diskImage $bootSize $bootSizeMiB $(sectorsToBytes 3)" >$out/post-vm
      command -v parted partx sfdisk >>$out/post-vm
    '';
  };

  # Full images whose boot loader the program installs from what the function maps
  # config.boot.loader to: systemd-boot with an EFI variable store, GRUB for BIOS (the
  # default loader and layout), GRUB for BIOS and EFI from two packages (hybrid).
  fullSystemdBoot = mdi {
    config = s.configSystemdBoot;
    partitionTableType = "efi";
    touchEFIVars = true;
    additionalSpace = "16M";
    bootSize = "64M";
  };
  fullGrub = mdi { additionalSpace = "16M"; };
  fullGrubHybrid = mdi {
    config = s.configGrubHybrid;
    partitionTableType = "hybrid";
    additionalSpace = "16M";
    bootSize = "64M";
  };

  # The spec the function writes, for each boot loader configuration.
  specs = {
    systemdBoot =
      (mdi {
        config = s.configSystemdBoot;
        partitionTableType = "efi";
        touchEFIVars = true;
        format = "qcow2-compressed";
        formatOptions.compression = "zstd";
      }).spec;
    grubLegacy = (mdi { }).spec;
    grubEfi =
      (mdi {
        config = s.configGrubEfi;
        partitionTableType = "efi";
      }).spec;
    grubHybrid =
      (mdi {
        config = s.configGrubHybrid;
        partitionTableType = "hybrid";
      }).spec;
    # hybrid with efiSupport = false: BIOS GRUB only, as NixOS' installer does.
    grubHybridBiosOnly = (mdi { partitionTableType = "hybrid"; }).spec;
    # linode: no partition table, devices = [ "nodev" ], no efiSupport: the menu only, no
    # GRUB build at all.
    linode =
      (mdi {
        config = s.configLinode;
        partitionTableType = "none";
      }).spec;
    grubOptions = fullGrubOptions.spec;
    grubEfiNvram = fullGrubEfiNvram.spec;
    systemdBootOptions = fullSystemdBootOptions.spec;
    aarch64ExtlinuxOptions = fullAarch64ExtlinuxOptions.spec;
    noLoader = (mdi { config = s.configNoLoader; }).spec;
    noInstall = (mdi { installBootLoader = false; }).spec;
    contents =
      (mdi {
        copyChannel = false;
        contents = [
          {
            source = s.hello;
            target = "/a";
            user = "alice";
            group = "staff";
          }
          {
            source = s.hello;
            target = "/b";
            user = "bob";
            group = "wheel";
          }
          {
            source = s.hello;
            target = "/c";
            user = "carol";
            group = "root";
          }
          {
            source = s.hello;
            target = "/d";
          }
        ];
      }).spec;
    storeOnly = storeOnly.spec;
    aarch64SystemdBoot =
      (mdi {
        pkgs = s.pkgsAarch64;
        config = s.configAarch64;
        partitionTableType = "efi";
      }).spec;
    aarch64Grub =
      (mdi {
        pkgs = s.pkgsAarch64;
        config = s.configAarch64Grub;
        partitionTableType = "efi";
      }).spec;
    aarch64Extlinux = fullAarch64Extlinux.spec;
  };
  # An aarch64 configuration's image built here (a cross build): extlinux needs no
  # loader binary, so the stand-in packages suffice to build it.
  fullAarch64Extlinux = mdi {
    pkgs = s.pkgsAarch64;
    config = s.configAarch64Extlinux;
    partitionTableType = "efi";
    additionalSpace = "16M";
    bootSize = "64M";
  };
  # Each honoured boot.loader option set, built (tests/nix_function.rs reads the files).
  fullGrubOptions = mdi {
    config = s.configGrubOptions;
    additionalSpace = "16M";
  };
  fullGrubEfiNvram = mdi {
    config = s.configGrubEfiNvram;
    partitionTableType = "efi";
    touchEFIVars = true;
    additionalSpace = "16M";
    bootSize = "64M";
  };
  fullGrubHybridBiosOnly = mdi {
    partitionTableType = "hybrid";
    additionalSpace = "16M";
    bootSize = "64M";
  };
  fullLinode = mdi {
    config = s.configLinode;
    partitionTableType = "none";
    additionalSpace = "16M";
  };
  fullSystemdBootOptions = mdi {
    config = s.configSystemdBootOptions;
    partitionTableType = "efi";
    additionalSpace = "16M";
    bootSize = "64M";
  };
  fullAarch64ExtlinuxOptions = mdi {
    pkgs = s.pkgsAarch64;
    config = s.configAarch64ExtlinuxOptions;
    partitionTableType = "efi";
    additionalSpace = "16M";
    bootSize = "64M";
  };

  # Options that change the disk and are not honoured: each fails the evaluation naming
  # the option (tests/nix_function.rs checks the messages).
  refused = builtins.mapAttrs (_: a: (mdi a).drvPath) {
    "grub.users" = { config = s.withGrub { users.root.hashedPassword = "grub.pbkdf2.sha512.x"; }; };
    "grub.theme" = { config = s.withGrub { theme = "/nix/store/00000000000000000000000000000000-breeze"; }; };
    "grub.splashImage" = { config = s.withGrub { splashImage = ./configuration.nix; }; };
    "grub.font" = { config = s.withGrub { font = "/nix/store/00000000000000000000000000000000-f/DejaVuSans.ttf"; }; };
    "grub.gfxmodeEfi" = { config = s.withGrub { gfxmodeEfi = "1024x768"; }; };
    "grub.useOSProber" = { config = s.withGrub { useOSProber = true; }; };
    "grub.mirroredBoots" = {
      config = s.withGrub {
        mirroredBoots = [
          { path = "/boot1"; devices = [ "/dev/vda" ]; }
          { path = "/boot2"; devices = [ "/dev/vdb" ]; }
        ];
      };
    };
    "grub.extraPrepareConfig" = { config = s.withGrub { extraPrepareConfig = "touch /boot/x"; }; };
    "grub.extraInstallCommands" = { config = s.withGrub { extraInstallCommands = "touch /boot/x"; }; };
    "grub.extraGrubInstallArgs" = { config = s.withGrub { extraGrubInstallArgs = [ "--modules=nativedisk" ]; }; };
    "grub.enableCryptodisk" = { config = s.withGrub { enableCryptodisk = true; }; };
    "grub.fsIdentifier" = { config = s.withGrub { fsIdentifier = "label"; }; };
    "grub.default" = { config = s.withGrub { default = "saved"; }; };
    "grub.efiSupport" = { config = s.withGrub { efiSupport = true; }; };
    "grub.devices" = {
      config = s.config;
      partitionTableType = "efi";
    };
    "efi.efiSysMountPoint" = {
      config = s.configGrubEfi // {
        boot.loader = s.configGrubEfi.boot.loader // { efi.efiSysMountPoint = "/boot/efi"; };
      };
      partitionTableType = "efi";
    };
    "systemd-boot.extraInstallCommands" = {
      config = s.withSystemdBoot { extraInstallCommands = "touch /boot/x"; };
      partitionTableType = "efi";
    };
    "systemd-boot.extraEfiDrivers" = {
      config = s.withSystemdBoot { extraEfiDrivers."ext4_x64.efi" = ./configuration.nix; };
      partitionTableType = "efi";
    };
    "systemd-boot.installDeviceTree" = {
      config = s.withSystemdBoot { installDeviceTree = true; };
      partitionTableType = "efi";
    };
    "systemd-boot.xbootldrMountPoint" = {
      config = s.withSystemdBoot { xbootldrMountPoint = "/boot"; };
      partitionTableType = "efi";
    };
  };
  refusedNames = builtins.attrNames refused;
  # Loaders that need their own installer: refused by name even when GRUB is enabled too.
  refusedLoaders = builtins.mapAttrs (_: o: (mdi { config = s.withLoader o; }).drvPath) {
    external = { external.enable = true; };
    initScript = { initScript.enable = true; };
  };

  # The file placed in a nixpkgs tree as nixos/lib/make-disk-image.nix (no ../package.nix
  # beside it): the program is pkgs' make-disk-image package; without one, a clear error.
  inNixpkgs =
    let
      file = /. + nixpkgsTreeFile;
      call =
        pkgs:
        import file {
          inherit pkgs;
          inherit (s) lib config;
        };
    in
    {
      found = (call (s.pkgs // { make-disk-image = s.makeDiskImage; })).drvPath == (mdi { }).drvPath;
      foundInBuildPackages =
        (call (s.pkgs // { buildPackages.make-disk-image = s.makeDiskImage; })).drvPath == (mdi { }).drvPath;
      missing = (call s.pkgs).drvPath;
    };

  expect = {
    systemdBoot = "${s.systemdPkg}/lib/systemd/boot/efi/systemd-bootx64.efi";
    grub = "${s.grub2}";
    grubEfi = "${s.grub2_efi}";
    ovmfVars = s.ovmf.variables;
    ovmf = "${s.ovmf}";
    hello = "${s.hello}";
    greeter = "${s.greeter}";
    kernel = "${s.kernel}";
    initrd = "${s.initrd}";
    toplevel = "${s.toplevel}";
    toplevelAarch64 = "${s.toplevelAarch64}";
    kernelAarch64 = "${s.kernelAarch64}";
    systemdBootAarch64 = "${s.systemdPkgAarch64}/lib/systemd/boot/efi/systemd-bootaa64.efi";
    grubAarch64 = "${s.grub2Aarch64Efi}";
    toplevelNamed = "${s.toplevelNamed}";
    utilLinux = "${s.pkgs.util-linux}";
    parted = "${s.pkgs.parted}";
    extra = "${s.extra}";
  };

  # memSize is accepted and changes nothing; so are efiFirmware and name-less defaults.
  memSizeIgnored = (mdi { }).drvPath == (mdi { memSize = 8192; efiFirmware = "/none"; }).drvPath;
  # A boot loader that needs more than files (limine) is an error, not an image without it.
  limine = (mdi { config = s.configLimine; }).drvPath;
  # Realises the one-folder GRUB module tree made for hybrid from grub2 + grub2_efi.
  grubHybridModules = s.mk "grub-hybrid-modules" ''
    cd "$grub"
    cat i386-pc/boot.img x86_64-efi/normal.mod >$out
  '' { inherit (specs.grubHybrid) grub; };

  # The flake's lib.makeDiskImage is this function; package.nix evaluates (with a stand-in
  # of the few nixpkgs functions it calls: it cannot be built without nixpkgs).
  flakeLib =
    let
      flake = (import ../../../../flake.nix).outputs {
        self = flake;
        nixpkgs = {
          lib.genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
          legacyPackages = { };
        };
      };
    in
    (flake.lib.makeDiskImage { inherit (s) pkgs lib config makeDiskImage; }).drvPath == (mdi { }).drvPath;
  package = import ../../../../package.nix {
    lib = {
      importTOML = f: builtins.fromTOML (builtins.readFile f);
      fileset = {
        toSource = { root, fileset }: map toString fileset;
        unions = l: l;
      };
      licenses = {
        mit = "MIT";
        asl20 = "Apache-2.0";
      };
      platforms.linux = [ "x86_64-linux" ];
    };
    rustPlatform.buildRustPackage = a: {
      inherit (a) pname version src cargoBuildFlags;
      lockFile = toString a.cargoLock.lockFile;
      inherit (a.meta) mainProgram;
    };
  };

  # Each of nixpkgs' assertions, fired.
  bad = {
    partitionTableType = (mdi { partitionTableType = "gpt"; }).drvPath;
    rootFSUID = (mdi { rootFSUID = null; }).drvPath;
    fsType = (mdi { fsType = "btrfs"; }).drvPath;
    touchEFIVars = (mdi { touchEFIVars = true; }).drvPath;
    onlyNixStoreContents =
      (mdi {
        onlyNixStore = true;
        installBootLoader = false;
        contents = [
          {
            source = s.hello;
            target = "/x";
          }
        ];
      }).drvPath;
    onlyNixStoreBootLoader = (mdi { onlyNixStore = true; }).drvPath;
    userWithoutGroup =
      (mdi {
        contents = [
          {
            source = s.hello;
            target = "/x";
            user = "alice";
          }
        ];
      }).drvPath;
  };
  # What nixpkgs also allows: no rootFSUID when not deterministic, other fsTypes unpartitioned.
  good = {
    notDeterministic = (mdi { rootFSUID = null; deterministic = false; }).drvPath;
    btrfsUnpartitioned =
      (mdi {
        config = s.configLinode;
        fsType = "btrfs";
        partitionTableType = "none";
      }).drvPath;
    efiVarsOnLegacyGpt = (mdi { touchEFIVars = true; partitionTableType = "legacy+gpt"; }).drvPath;
  };
}
