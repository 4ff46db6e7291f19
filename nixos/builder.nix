# services.nix-relay-builder: a backend machine the relay builds on.
#
#   imports = [ ./nixos/builder.nix ];
#   services.nix-relay-builder = {
#     enable = true;
#     relayPublicKey = "ssh-ed25519 AAAA... nix-relay@ser5";  # builderKeyFile's .pub
#   };
#
# Creates the SSH user the relay logs in as (default nix-builder), trusted by
# this machine's nix-daemon, allowed to run only the command of `protocol`:
# `nix-daemon --stdio` for an ssh-ng:// backend entry (the default),
# `nix-store --serve --write` for ssh://;
# enables OpenSSH; keeps the store from filling the disk (weekly GC, min-free
# / max-free). The relay pins this machine's SSH host key: put the contents
# of /etc/ssh/ssh_host_ed25519_key.pub into the backend's `host_key`.
#
# lib surface used: mkOption mkEnableOption mkIf mkDefault optionalString
#   types.{bool str int enum}
{ config, lib, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf mkDefault types;
  cfg = config.services.nix-relay-builder;
  GiB = 1024 * 1024 * 1024;
  # What the relay runs for each URI scheme of its backend entry (README:
  # backends). A backend with `store = ...` in the relay config needs
  # restrictCommand = false (the relay appends `--store ...`).
  command = {
    ssh-ng = "${config.nix.package}/bin/nix-daemon --stdio";
    ssh = "${config.nix.package}/bin/nix-store --serve --write";
  }.${cfg.protocol};
  keyOptions = "restrict" + lib.optionalString cfg.restrictCommand ",command=\"${command}\"";
in
{
  options.services.nix-relay-builder = {
    enable = mkEnableOption "this machine as a nix-relay backend (builder)";

    relayPublicKey = mkOption {
      type = types.str;
      example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... nix-relay@ser5";
      description = ''
        The relay's builder SSH public key: the `.pub` of the file given as
        services.nix-relay.builderKeyFile (or of the backend's `ssh_key`).
      '';
    };

    user = mkOption {
      type = types.str;
      default = "nix-builder";
      description = "The SSH user the relay logs in as (the user in the backend's uri).";
    };

    protocol = mkOption {
      type = types.enum [ "ssh-ng" "ssh" ];
      default = "ssh-ng";
      description = ''
        The scheme of this machine's URI in the relay's backend entry:
        `ssh-ng` (the relay runs `nix-daemon --stdio`) or `ssh`
        (`nix-store --serve --write`). With restrictCommand, the relay's key
        may run only that command.
      '';
    };

    restrictCommand = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Let the relay's key run only the command of `protocol` (an
        authorized_keys `command=` with `restrict`). Turn off if the relay's
        backend entry sets `store`, which appends `--store ...`.
      '';
    };

    gc = {
      automatic = mkOption {
        type = types.bool;
        default = true;
        description = "Collect garbage automatically (nix.gc).";
      };
      dates = mkOption {
        type = types.str;
        default = "weekly";
        description = "When to collect garbage (systemd calendar expression).";
      };
      options = mkOption {
        type = types.str;
        default = "--delete-older-than 14d";
        description = "Options for nix-collect-garbage.";
      };
    };

    minFree = mkOption {
      type = types.int;
      default = 5 * GiB;
      description = "nix.settings.min-free: collect garbage during builds when free space drops below this (bytes).";
    };

    maxFree = mkOption {
      type = types.int;
      default = 20 * GiB;
      description = "nix.settings.max-free: stop such a collection once this much is free (bytes).";
    };

    cacheUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "http://ser5.internal:5000";
      description = ''
        The relay's binary cache (its settings.http.listen), added to
        nix.settings.substituters: when a client allows substitutes
        (builders-use-substitutes), this builder gets a build's inputs the
        relay holds, or fetches from its upstream caches, over HTTP instead
        of the relay's SSH push. null: not used.
      '';
    };

    cachePublicKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "ser5-nix-relay-1:9ZAh...";
      description = "The relay's cache signing public key (name:base64), added to nix.settings.trusted-public-keys.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.cacheUrl == null || cfg.cachePublicKey != null;
        message = "services.nix-relay-builder.cachePublicKey must be set when cacheUrl is (Nix only substitutes signed paths).";
      }
    ];
    nix.settings.substituters = lib.optional (cfg.cacheUrl != null) cfg.cacheUrl;
    nix.settings.trusted-public-keys = lib.optional (cfg.cacheUrl != null) cfg.cachePublicKey;

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.user;
      description = "nix-relay builds";
      # sshd runs the command through the login shell; nologin would refuse it.
      useDefaultShell = true;
      openssh.authorizedKeys.keys = [ "${keyOptions} ${cfg.relayPublicKey}" ];
    };
    users.groups.${cfg.user} = { };

    # The relay uploads unsigned inputs and builds input-addressed
    # derivations: its user must be trusted by the nix-daemon.
    nix.settings.trusted-users = [ "root" cfg.user ];

    services.openssh.enable = true;

    nix.gc = {
      automatic = mkDefault cfg.gc.automatic;
      dates = mkDefault cfg.gc.dates;
      options = mkDefault cfg.gc.options;
    };
    nix.settings.min-free = mkDefault cfg.minFree;
    nix.settings.max-free = mkDefault cfg.maxFree;
  };
}
