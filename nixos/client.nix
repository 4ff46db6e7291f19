# services.nix-relay-client: use the relay as this machine's one remote
# builder, and its HTTP binary cache as a substituter.
#
#   imports = [ ./nixos/client.nix ];
#   services.nix-relay-client = {
#     enable = true;
#     host = "ser5.internal";
#     systems = [ "x86_64-linux" "aarch64-linux" ];
#     maxJobs = 16;
#     sshKey = "/etc/nix/id_relay";
#     publicHostKey = "c3NoLWVkMjU1MTkg...";        # from `nix-relay machines-entry`
#     cacheUrl = "http://ser5.internal:5000";
#     cachePublicKey = "ser5-nix-relay-1:9ZAh...";  # from `nix-relay keygen` / the relay's log
#   };
#
# Nix before 2.31 hands "host:port" of an ssh:// or ssh-ng:// URI to ssh as
# a host name (2.31 added the port, NixOS/nix#3425), so the port goes into
# /etc/ssh/ssh_config for root (the user the build hook's ssh runs as), with
# HostKeyAlias so that the host key Nix pins for "<host>" still matches on a
# port other than 22 (ssh would look up "[<host>]:<port>"). The same block
# multiplexes root's SSH connections to the relay (ControlMaster auto,
# ControlPersist): after the first build, a build pays no SSH handshake.
#
# lib surface used: mkOption mkEnableOption mkIf mkMerge hasPrefix optionals
#   concatStringsSep
#   types.{str port int enum nullOr listOf numbers.positive}
{ config, lib, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types;
  cfg = config.services.nix-relay-client;
  # Root's multiplexed connections to the relay (ControlPath).
  controlDir = "/run/nix-relay-client";
in
{
  options.services.nix-relay-client = {
    enable = mkEnableOption "the nix-relay as this machine's remote builder and binary cache";

    host = mkOption {
      type = types.str;
      example = "ser5.internal";
      description = "Host name of the relay.";
    };

    port = mkOption {
      type = types.port;
      default = 2222;
      description = "The relay's SSH port (its settings.server.listen).";
    };

    protocol = mkOption {
      type = types.enum [ "ssh" "ssh-ng" ];
      default = "ssh-ng";
      description = "`ssh-ng` (daemon protocol) or `ssh` (nix-store --serve); the relay serves both.";
    };

    sshUser = mkOption {
      type = types.str;
      default = "nix-relay";
      description = "SSH user name. The relay does not check it; the key is what counts.";
    };

    systems = mkOption {
      type = types.listOf types.str;
      example = [ "x86_64-linux" "aarch64-linux" ];
      description = "Systems to send to the relay (the union of its backends' systems).";
    };

    maxJobs = mkOption {
      type = types.int;
      default = 8;
      description = "Builds this machine sends to the relay at once (up to the sum of the backends' max_jobs).";
    };

    speedFactor = mkOption {
      # As nixpkgs declares nix.buildMachines.*.speedFactor.
      type = types.numbers.positive;
      default = 1;
      example = 1.5;
      description = "Speed factor of the relay among this machine's builders (a positive number).";
    };

    supportedFeatures = mkOption {
      type = types.listOf types.str;
      default = [ "benchmark" "big-parallel" "nixos-test" ];
      example = [ "benchmark" "big-parallel" "nixos-test" "kvm" ];
      description = "Features to send to the relay (the union over its backends).";
    };

    mandatoryFeatures = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Features a derivation must require to be sent to the relay.";
    };

    sshKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/nix/id_relay";
      description = ''
        Private key root logs into the relay with (its public key is a
        [[client]] key of the relay). Not in the store: a path string.
        null: root's default SSH identities.
      '';
    };

    publicHostKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUZx...";
      description = ''
        The relay's SSH host key, base64 of its `ssh-ed25519 AAAA...` line,
        as `nix-relay machines-entry` prints it (last column), or
        `base64 -w0 ssh_host_ed25519_key.pub`. null: root's known_hosts.
      '';
    };

    controlPersist = mkOption {
      type = types.nullOr types.str;
      default = "10m";
      example = "1h";
      description = ''
        How long root's multiplexed SSH connection to the relay stays open
        after its last build (ssh_config ControlPersist). null: no
        multiplexing, every build hook pays a full SSH handshake.
      '';
    };

    cacheUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "http://ser5.internal:5000";
      description = "The relay's binary cache (its settings.http.listen), added to nix.settings.substituters. null: not used.";
    };

    cachePublicKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "ser5-nix-relay-1:9ZAh...";
      description = "The relay's cache signing public key (name:base64), added to nix.settings.trusted-public-keys.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.cacheUrl == null || cfg.cachePublicKey != null;
          message = "services.nix-relay-client.cachePublicKey must be set when cacheUrl is (Nix only substitutes signed paths).";
        }
        {
          assertion = cfg.sshKey == null || !(lib.hasPrefix builtins.storeDir cfg.sshKey);
          message = "services.nix-relay-client.sshKey must be a path outside ${builtins.storeDir} (it is a private key).";
        }
      ];

      nix.distributedBuilds = true;
      nix.buildMachines = [
        {
          hostName = cfg.host;
          inherit (cfg) protocol sshUser sshKey systems maxJobs speedFactor supportedFeatures mandatoryFeatures publicHostKey;
        }
      ];
      # Let the relay (and its backends) fetch inputs from caches instead of
      # uploading them from this machine.
      nix.settings.builders-use-substitutes = true;

      # Only root (the build hook) is redirected; `ssh <host>` by anyone
      # else still reaches the machine's own sshd. `Match all` ends the
      # block, so extraConfig lines other modules add after it stay global.
      # %C: a hash of host, port and user (short enough for a socket path).
      programs.ssh.extraConfig = lib.concatStringsSep "\n" ([
        "Match originalhost ${cfg.host} localuser root"
        "  Port ${toString cfg.port}"
        "  HostKeyAlias ${cfg.host}"
      ] ++ lib.optionals (cfg.controlPersist != null) [
        "  ControlMaster auto"
        "  ControlPath ${controlDir}/%C"
        "  ControlPersist ${cfg.controlPersist}"
      ] ++ [ "Match all" ]) + "\n";
    }

    (mkIf (cfg.controlPersist != null) {
      systemd.tmpfiles.rules = [ "d ${controlDir} 0700 root root - -" ];
    })

    (mkIf (cfg.cacheUrl != null) {
      nix.settings.substituters = [ cfg.cacheUrl ];
      nix.settings.trusted-public-keys = [ cfg.cachePublicKey ];
    })
  ]);
}
