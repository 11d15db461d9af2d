# A small stand-in for nixpkgs (pkgs, lib) and an evaluated NixOS configuration (config),
# just enough for nix/make-disk-image.nix: Debian's nix-bin comes without nixpkgs. Every
# builder is the host's shell (the tests build with the sandbox off); closureInfo is
# nixpkgs' (exportReferencesGraph + structured attrs, same output files).
#
# mdiBin: path of the make-disk-image program built by cargo; the stand-in package copies it.
{ mdiBin }:
rec {
  system = builtins.currentSystem;

  # Every script ends with a shell builtin: a shell runs its last command with exec, and
  # when that command (coreutils' ln, chmod, ...) closes its output before exiting, Nix
  # 2.8 sees the end of the log, kills the builder and reports "signal 9".
  mk =
    name: script: attrs:
    derivation (
      {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-eu" "-c" (script + "\n:") ];
        PATH = "/usr/bin:/bin";
      }
      // attrs
    );

  lib = rec {
    assertMsg = pred: msg: pred || builtins.throw msg;
    # nixpkgs' lib.generators.toPretty, for the strings and lists assertOneOf prints.
    toPretty =
      v:
      if builtins.isList v then
        "[\n" + builtins.concatStringsSep "" (map (x: "  ${toPretty x}\n") v) + "]"
      else if builtins.isString v then
        "\"${v}\""
      else
        toString v;
    assertOneOf =
      name: val: xs:
      assertMsg (builtins.elem val xs) "${name} must be one of ${toPretty xs}, but is: ${toPretty val}";
    cleanSource =
      src:
      builtins.path {
        path = src;
        name = "source";
        filter = path: type: baseNameOf path != ".git";
      };
  };

  # stdenv's runCommand: a bash script with `set -eu -o pipefail`, nativeBuildInputs on
  # PATH, passthru on the result.
  runCommand =
    name: env: script:
    derivation (
      builtins.removeAttrs env [ "passthru" "nativeBuildInputs" ]
      // {
        inherit name system;
        builder = "/bin/bash";
        args = [ "-eu" "-o" "pipefail" "-c" (script + "\n:") ];
        PATH = builtins.concatStringsSep ":" (
          map (p: "${p}/bin") (env.nativeBuildInputs or [ ]) ++ [ "/usr/bin" "/bin" ]
        );
      }
    )
    // (env.passthru or { });

  # nixpkgs' closureInfo: the three files, in its format.
  closureInfo =
    { rootPaths }:
    derivation {
      name = "closure-info";
      inherit system;
      builder = "/bin/sh";
      __structuredAttrs = true;
      exportReferencesGraph.closure = rootPaths;
      args = [
        "-eu"
        "-c"
        ''
          export PATH=/usr/bin:/bin
          attrs=.attrs.json
          [ -e "$attrs" ] || attrs="$NIX_ATTRS_JSON_FILE"
          out="$(jq -r .outputs.out <"$attrs")"
          mkdir "$out"
          jq -r '(.closure | map(.narSize) | add) // 0' <"$attrs" >"$out/total-nar-size"
          jq -r '.closure | map([.path, .narHash, .narSize, "", (.references | length)] + .references) | add | map("\(.)\n") | add // ""' <"$attrs" | head -n -1 >"$out/registration"
          jq -r '.closure[].path' <"$attrs" >"$out/store-paths"
          :
        ''
      ];
    };

  # The stand-in system: a few packages that refer to each other, a kernel and an initrd,
  # and a toplevel with init, boot.json (bootspec v1) and the usual links.
  hello = mk "hello-2.12" ''
    mkdir -p $out/bin $out/share/doc
    printf '#!/bin/sh\necho hello\n' >$out/bin/hello
    chmod 0755 $out/bin/hello
    echo "hello, the documentation" >$out/share/doc/README
    echo "hello, the notes" >$out/share/doc/NOTES
  '' { };
  greeter = mk "greeter-1.0" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\nexec %s/bin/hello "$@"\n' "$hello" >$out/bin/greet
    chmod 0755 $out/bin/greet
  '' { inherit hello; };
  kernel = mk "linux-6.6-stand-in" ''
    mkdir $out
    head -c 70000 /dev/zero | tr '\0' 'k' >$out/bzImage
  '' { };
  initrd = mk "initrd-linux-6.6-stand-in" ''
    mkdir $out
    echo initrd >$out/initrd
  '' { };
  # configurationName: the configuration-name file NixOS' GRUB module writes into the
  # toplevel (boot.loader.grub.configurationName).
  toplevelWith =
    {
      name ? "nixos-system-standin-25.05",
      configurationName ? null,
    }:
    mk name (
      (if configurationName == null then "" else "mkdir -p $out; printf '%s' '${configurationName}' >$out/configuration-name\n")
      + ''
    mkdir -p $out/bin
    printf '#!%s/bin/greet\n' "$greeter" >$out/init
    printf '#!/bin/sh\necho activating\n' >$out/activate
    printf '#!/bin/sh\necho switch-to-configuration: stand-in\n' >$out/bin/switch-to-configuration
    chmod 0755 $out/init $out/activate $out/bin/switch-to-configuration
    ln -s "$greeter" $out/sw
    ln -s "$kernel/bzImage" $out/kernel
    ln -s "$initrd/initrd" $out/initrd
    echo 25.05.standin >$out/nixos-version
    echo "$system" >$out/system
    printf '{"org.nixos.bootspec.v1":{"init":"%s/init","initrd":"%s/initrd","kernel":"%s/bzImage","kernelParams":["console=ttyS0"],"label":"NixOS 25.05 (Linux 6.6)","system":"%s","toplevel":"%s"},"org.nixos.specialisation.v1":{}}\n' \
      "$out" "$initrd" "$kernel" "$system" "$out" >$out/boot.json
  ''
    ) { inherit greeter kernel initrd; };
  toplevel = toplevelWith { };
  toplevelNamed = toplevelWith {
    name = "nixos-system-named-25.05";
    configurationName = "Stable 6.6";
  };
  # For additionalPaths.
  extra = mk "extra-data" ''
    mkdir $out
    echo "an additional path" >$out/data
  '' { };

  # An aarch64 system, for cross builds: the image derivation runs on this (build) machine
  # with the host's program; only the bootspec and the loader packages are aarch64's.
  kernelAarch64 = mk "linux-6.6-aarch64-stand-in" ''
    mkdir $out
    head -c 70000 /dev/zero | tr '\0' 'a' >$out/Image
  '' { };
  toplevelAarch64 = mk "nixos-system-aarch64-standin-25.05" ''
    mkdir -p $out
    printf '#!%s/bin/greet\n' "$greeter" >$out/init
    chmod 0755 $out/init
    ln -s "$kernel/Image" $out/kernel
    ln -s "$initrd/initrd" $out/initrd
    echo 25.05.standin >$out/nixos-version
    printf '{"org.nixos.bootspec.v1":{"init":"%s/init","initrd":"%s/initrd","kernel":"%s/Image","kernelParams":["console=ttyAMA0"],"label":"NixOS 25.05 (Linux 6.6)","system":"aarch64-linux","toplevel":"%s"},"org.nixos.specialisation.v1":{}}\n' \
      "$out" "$initrd" "$kernel" "$out" >$out/boot.json
  '' {
    inherit greeter initrd;
    kernel = kernelAarch64;
  };
  systemdPkgAarch64 = mk "systemd-aarch64-stand-in" ''
    mkdir -p $out/lib/systemd/boot/efi
    echo stand-in >$out/lib/systemd/boot/efi/systemd-bootaa64.efi
  '' { };
  grub2Aarch64Efi = mk "grub-efi-aarch64-stand-in" ''
    mkdir -p $out/lib/grub/arm64-efi $out/bin
    printf '#!/bin/sh\nexit 1\n' >$out/bin/grub-mkimage
  '' { };

  # The boot loader inputs are Debian's files (systemd-boot-efi, grub-pc-bin,
  # grub-efi-amd64-bin, grub-common, ovmf) in nixpkgs' package shapes, copied by the
  # builders (no sandbox): only tests that build images with a boot loader build them.
  # systemd's package: the EFI binary where bootctl finds it.
  systemdPkg = mk "systemd-stand-in" ''
    mkdir -p $out/lib/systemd/boot/efi
    cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi $out/lib/systemd/boot/efi/
  '' { };
  # grub2 (BIOS) and grub2_efi: lib/grub/<platform> and a grub-mkimage, which makes an
  # image for any platform from the modules folder it is given.
  grubPkg =
    name: platform:
    mk name ''
      mkdir -p $out/lib/grub $out/bin
      cp -r /usr/lib/grub/${platform} $out/lib/grub/
      printf '#!/bin/sh\nexec /usr/bin/grub-mkimage "$@"\n' >$out/bin/grub-mkimage
      chmod 0755 $out/bin/grub-mkimage
    '' { };
  grub2 = grubPkg "grub-stand-in" "i386-pc";
  grub2_efi = grubPkg "grub-efi-stand-in" "x86_64-efi";
  # nixpkgs' OVMF.fd: the fd output (FV/OVMF_CODE.fd, FV/OVMF_VARS.fd; here Debian's 4 MiB
  # build) with passthru firmware and variables, store path strings of files in it.
  ovmf =
    let
      fd = mk "OVMF-stand-in-fd" ''
        mkdir -p $out/FV
        cp /usr/share/OVMF/OVMF_CODE_4M.fd $out/FV/OVMF_CODE.fd
        cp /usr/share/OVMF/OVMF_VARS_4M.fd $out/FV/OVMF_VARS.fd
      '' { };
    in
    fd
    // {
      firmware = "${fd}/FV/OVMF_CODE.fd";
      variables = "${fd}/FV/OVMF_VARS.fd";
    };

  makeDiskImage = mk "make-disk-image-host" ''
    mkdir -p $out/bin
    cp "$bin" $out/bin/make-disk-image
  '' { bin = mdiBin; };

  # Two of the tools nixpkgs' postVM had on PATH, as stand-in packages (bin/ shims to the
  # host's): the function adds what pkgs has.
  tool =
    name: progs:
    mk name (builtins.concatStringsSep "\n" (
      [ "mkdir -p $out/bin" ]
      ++ map (p: "printf '#!/bin/sh\\nexec /usr/sbin/${p} \"$@\"\\n' >$out/bin/${p}; chmod 0755 $out/bin/${p}") progs
    )) { };
  pkgs = {
    inherit runCommand closureInfo;
    util-linux = tool "util-linux-stand-in" [ "partx" "sfdisk" ];
    parted = tool "parted-stand-in" [ "parted" ];
    path = ./channel-src;
    stdenv.hostPlatform.efiArch = "x64";
    OVMF.fd = ovmf;
    # grub2.override { efiSupport = true; } is nixpkgs' grub2_efi.
    grub2 = grub2 // {
      override = a: if a.efiSupport or false then grub2_efi else grub2;
    };
  };

  # nixpkgs for an aarch64 host built on this machine (pkgsCross-like): hostPlatform says
  # aarch64, buildPackages has the build machine's GRUB.
  pkgsAarch64 = pkgs // {
    stdenv = {
      hostPlatform = {
        efiArch = "aa64";
        system = "aarch64-linux";
      };
      buildPlatform.system = system;
    };
    buildPackages = { inherit grub2; };
    grub2 = grub2Aarch64Efi // {
      override = a: grub2Aarch64Efi;
    };
  };

  # config: GRUB on /dev/vda (NixOS' default loader; its grub module sets
  # system.build.grub), users with and without fixed ids.
  config = {
    system.build = {
      inherit toplevel;
      grub = grub2;
    };
    system.nixos = {
      version = "25.05.standin";
      versionSuffix = ".standin";
    };
    boot.loader = {
      grub = {
        enable = true;
        devices = [ "/dev/vda" ];
        efiSupport = false;
        zfsSupport = false;
      };
      systemd-boot.enable = false;
      timeout = 7;
    };
    systemd.package = systemdPkg;
    users.users = {
      root.uid = 0;
      alice.uid = 1000;
      bob.uid = null;
    };
    users.groups = {
      root.gid = 0;
      staff.gid = 50;
      wheel = { };
    };
  };
  # The same system with systemd-boot (what NixOS' systemd-boot module sets).
  configSystemdBoot = config // {
    boot.loader = {
      grub.enable = false;
      systemd-boot.enable = true;
      timeout = 3;
      efi.canTouchEfiVariables = true;
    };
  };
  # What NixOS' own image modules set for UEFI GRUB (nixpkgs' disk-image efi variant,
  # amazon-image efi): EFI GRUB at the removable path, no BIOS boot code.
  configGrubEfi = config // {
    boot.loader = config.boot.loader // {
      grub = config.boot.loader.grub // {
        efiSupport = true;
        efiInstallAsRemovable = true;
        devices = [ "nodev" ];
      };
    };
  };
  # Both platforms (proxmox hybrid-style): BIOS boot code on /dev/vda and EFI GRUB.
  configGrubHybrid = config // {
    boot.loader = config.boot.loader // {
      grub = config.boot.loader.grub // {
        efiSupport = true;
        efiInstallAsRemovable = true;
      };
    };
  };
  # The GRUB options install-grub.pl reads, each set: the menu's extras, the default
  # entry pointing at an extra entry, a file for /boot, a named configuration, no timeout.
  configGrubOptions = config // {
    system = config.system // {
      build = config.system.build // {
        toplevel = toplevelNamed;
      };
    };
    boot.loader = config.boot.loader // {
      timeout = null;
      grub = config.boot.loader.grub // {
        configurationName = "Stable 6.6";
        extraConfig = "serial --unit=0 --speed=115200\nterminal_output --append serial";
        extraEntries = ''
          menuentry "Memtest86+" {
            linux @bootRoot@/memtest.bin
          }
        '';
        extraPerEntryConfig = "insmod part_msdos";
        default = 1;
        timeoutStyle = "countdown";
        extraFiles."memtest.bin" = "${hello}/share/doc/README";
        # What grub.nix makes of extraFiles: accepted, the copy is done natively.
        extraPrepareConfig = ''
          /nix/store/00000000000000000000000000000000-coreutils/bin/install -Dp '${hello}/share/doc/README' '/boot'/'memtest.bin'
        '';
        # NixOS' defaults for the graphical menu (not drawn): accepted.
        font = "/nix/store/00000000000000000000000000000000-grub-2.12/share/grub/unicode.pf2";
        splashImage = "/nix/store/00000000000000000000000000000000-simple-dark-gray-bootloader/share/artwork/gnome/nix-wallpaper-simple-dark-gray_bootloader.png";
        backgroundColor = "#2F302F";
      };
    };
  };
  # UEFI GRUB installed as grub-install does without --removable, with its NVRAM entry.
  configGrubEfiNvram = configGrubEfi // {
    boot.loader = configGrubEfi.boot.loader // {
      grub = configGrubEfi.boot.loader.grub // {
        efiInstallAsRemovable = false;
      };
      efi.canTouchEfiVariables = true;
    };
  };
  # linode: no partition table, GRUB's menu only.
  configLinode = config // {
    boot.loader = config.boot.loader // {
      grub = config.boot.loader.grub // {
        devices = [ "nodev" ];
      };
    };
  };
  # systemd-boot's options that change the ESP, each set (memtest86's shape).
  configSystemdBootOptions = configSystemdBoot // {
    boot.loader = configSystemdBoot.boot.loader // {
      timeout = null;
      systemd-boot = configSystemdBoot.boot.loader.systemd-boot // {
        editor = false;
        consoleMode = "max";
        extraEntries."memtest86.conf" = "title Memtest86+\nefi /efi/memtest86/memtest.efi\nsort-key z_memtest\n";
        extraFiles."efi/memtest86/memtest.efi" = "${hello}/share/doc/NOTES";
      };
    };
  };
  # One boot.loader option at a time, for the refusals.
  withGrub = o: config // { boot.loader = config.boot.loader // { grub = config.boot.loader.grub // o; }; };
  withSystemdBoot =
    o:
    configSystemdBoot
    // {
      boot.loader = configSystemdBoot.boot.loader // {
        systemd-boot = configSystemdBoot.boot.loader.systemd-boot // o;
      };
    };
  withLoader = o: config // { boot.loader = config.boot.loader // o; };
  configNoLoader = config // {
    boot.loader.grub.enable = false;
  };
  configAarch64 = config // {
    system = config.system // {
      build = {
        toplevel = toplevelAarch64;
        grub = null;
      };
    };
    systemd.package = systemdPkgAarch64;
    boot.loader = {
      grub.enable = false;
      systemd-boot.enable = true;
      timeout = 3;
    };
  };
  configAarch64Grub = configAarch64 // {
    boot.loader.grub = {
      enable = true;
      efiSupport = true;
      devices = [ "nodev" ];
    };
  };
  configAarch64ExtlinuxOptions = configAarch64 // {
    boot.loader = {
      generic-extlinux-compatible = {
        enable = true;
        configurationLimit = 0;
        useGenerationDeviceTree = false;
      };
      timeout = null;
    };
  };
  configAarch64Extlinux = configAarch64 // {
    boot.loader = {
      generic-extlinux-compatible.enable = true;
      timeout = 2;
    };
  };
  configLimine = config // {
    boot.loader = {
      grub.enable = false;
      limine.enable = true;
    };
  };
}
