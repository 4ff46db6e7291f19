# services.nix-relay: the relay daemon (one SSH endpoint for Nix remote
# builds, plus its signed HTTP binary cache).
#
#   imports = [ ./nixos/module.nix ];
#   services.nix-relay = {
#     enable = true;
#     openFirewall = true;
#     builderKeyFile = "/run/keys/nix-relay-builder";   # ssh key into backends
#     settings = {
#       client = [ { name = "calypso"; key = "ssh-ed25519 AAAA... root@calypso"; } ];
#       backend = [ { name = "opi01"; uri = "ssh-ng://nix-builder@opi01.internal";
#                     host_key = "ssh-ed25519 AAAA..."; systems = [ "aarch64-linux" ]; } ];
#     };
#   };
#
# `settings` is the relay's TOML config (README.md, "Configure it"), written
# as Nix. Secrets never go into `settings` or the Nix store: give their file
# paths to hostKeyFile / signingKeyFile / builderKeyFile / ec2CredentialsFile;
# systemd hands them to the service (LoadCredential) and the generated TOML
# points at /run/credentials/nix-relay.service/<name>.
#
# lib surface used (tests/nixos/eval.nix stands in for exactly this):
#   mkOption mkEnableOption mkIf mkMerge literalExpression
#   types.{bool str nullOr path package submodule} optional optionals
#   optionalAttrs hasPrefix removePrefix any filterAttrs mapAttrsToList
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types optional optionals;

  cfg = config.services.nix-relay;
  settingsFormat = pkgs.formats.toml { };

  credDir = "/run/credentials/nix-relay.service";
  cred = name: "${credDir}/${name}";

  stateDir = cfg.settings.server.state_dir;
  backends = cfg.settings.backend or [ ];
  # ssh:// (serve) and ssh-ng:// (worker) backends both log in with ssh_key.
  isSsh = b: lib.hasPrefix "ssh://" (b.uri or "") || lib.hasPrefix "ssh-ng://" (b.uri or "");
  hasLocal = lib.any (b: (b.uri or "") == "local") backends;

  # "0.0.0.0:2222", "[::]:2222" -> 2222
  portOf = listen:
    let m = builtins.match ".*:([0-9]+)" listen;
    in if m == null then throw "services.nix-relay: no port in listen address \"${listen}\""
       else builtins.fromJSON (builtins.head m);
  sshPort = portOf cfg.settings.server.listen;
  httpPort = if cfg.settings.http.listen == null then null else portOf cfg.settings.http.listen;
  needsBind = sshPort < 1024 || (httpPort != null && httpPort < 1024);

  # What the relay reads. The file options win over whatever settings say.
  finalSettings =
    let
      s = cfg.settings;
      server = s.server
        // lib.optionalAttrs (cfg.hostKeyFile != null) { host_key = cred "host_key"; };
      cache = (s.cache or { })
        // lib.optionalAttrs (cfg.signingKeyFile != null) { signing_key = cred "signing_key"; };
      withBuilderKey = b:
        if cfg.builderKeyFile != null && isSsh b && !(b ? ssh_key)
        then b // { ssh_key = cred "builder_key"; } else b;
    in
    builtins.removeAttrs s [ "http" "cache" ]
    // { inherit server; backend = map withBuilderKey backends; }
    // lib.optionalAttrs (cache != { }) { inherit cache; }
    # http.listen = null means no HTTP listener: no [http] table at all.
    // lib.optionalAttrs (s.http.listen != null) { http = lib.filterAttrs (_: v: v != null) s.http; };

  configFile = settingsFormat.generate "nix-relay.toml" finalSettings;
  # SIGHUP reloads only the backends; any other change needs a restart.
  backendsPart = builtins.toJSON (finalSettings.backend or [ ]);
  restPart = builtins.toJSON (builtins.removeAttrs finalSettings [ "backend" ]);

  credentials = lib.filterAttrs (_: v: v != null) {
    host_key = cfg.hostKeyFile;
    signing_key = cfg.signingKeyFile;
    builder_key = cfg.builderKeyFile;
    aws_credentials = cfg.ec2CredentialsFile;
  };

  # A secret is a file path outside the (world-readable) Nix store. A Nix
  # path literal (./key) would be copied into the store, so it is refused too.
  secretPathOk = v:
    builtins.isString v && lib.hasPrefix "/" v && !(lib.hasPrefix builtins.storeDir v);
  secretSettings =
    optional (finalSettings.server ? host_key) { what = "settings.server.host_key"; v = finalSettings.server.host_key; }
    ++ optional ((finalSettings.cache or { }) ? signing_key) { what = "settings.cache.signing_key"; v = finalSettings.cache.signing_key; }
    ++ map (b: { what = "settings.backend (${b.name or "?"}).ssh_key"; v = b.ssh_key; })
      (builtins.filter (b: b ? ssh_key) finalSettings.backend);
  fileOptions = lib.filterAttrs (_: v: v != null) {
    hostKeyFile = cfg.hostKeyFile;
    signingKeyFile = cfg.signingKeyFile;
    builderKeyFile = cfg.builderKeyFile;
    ec2CredentialsFile = cfg.ec2CredentialsFile;
  };

  secretFileOption = what: mkOption {
    type = types.nullOr types.path;
    default = null;
    example = "/run/keys/nix-relay-${what}";
    description = ''
      File holding the ${what}, read by systemd (LoadCredential) and handed
      to the service as ${credDir}/<name>. Give a string path outside the
      Nix store (e.g. managed by agenix/sops-nix, or created by hand); a
      Nix path literal would copy the secret into the world-readable store
      and is refused.
    '';
  };
in
{
  options.services.nix-relay = {
    enable = mkEnableOption "nix-relay, one SSH endpoint for Nix remote builds with a signed binary cache";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The nix-relay package to run.";
    };

    settings = mkOption {
      default = { };
      description = ''
        The relay's configuration (README.md, "Configure it"), rendered to
        TOML. `[[client]]` and `[[backend]]` are lists of attribute sets:
        `client = [ { name = ...; key = ...; } ]`. Unknown keys are refused
        by the relay at start (`nix-relay check-config`).
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options.server = {
          listen = mkOption {
            type = types.str;
            default = "0.0.0.0:2222";
            description = "SSH listen address (host:port) for Nix clients.";
          };
          state_dir = mkOption {
            type = types.str;
            default = "/var/lib/nix-relay";
            description = ''
              The relay's state: its store / binary cache (`cache/`), and
              the host and signing keys it creates when no file is given.
              Must be writable by the nix-relay user; /var/lib/<name> is
              managed by systemd's StateDirectory.
            '';
          };
        };
        options.http.listen = mkOption {
          type = types.nullOr types.str;
          default = "0.0.0.0:5000";
          description = ''
            Listen address of the binary cache (and /metrics, /status,
            /healthz). null: no HTTP listener.
          '';
        };
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the SSH and HTTP ports of settings.server.listen / settings.http.listen.";
    };

    hostKeyFile = secretFileOption "SSH host key (ssh_host_ed25519_key; null: created in the state dir on first start)";
    signingKeyFile = secretFileOption "cache signing key (Nix format name:base64, e.g. from `nix-relay keygen`; null: created in the state dir on first start)";
    builderKeyFile = secretFileOption "SSH private key the relay logs into ssh:// and ssh-ng:// backends with (used as ssh_key of every such backend that sets none)";
    ec2CredentialsFile = secretFileOption "AWS shared credentials file for the [ec2] builders (exported as AWS_SHARED_CREDENTIALS_FILE, where the relay's credential chain reads it)";
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = backends != [ ];
          message = "services.nix-relay.settings.backend must list at least one backend (e.g. [ { name = \"local\"; uri = \"local\"; systems = [ \"x86_64-linux\" ]; } ]).";
        }
        {
          assertion = (cfg.settings.client or [ ]) != [ ] || (cfg.settings.server.authorized_keys or null) != null;
          message = "services.nix-relay: no clients: set settings.client (a list of { name; key; }) or settings.server.authorized_keys, or nobody can log in.";
        }
      ]
      ++ map (s: {
        assertion = secretPathOk s.v;
        message = "services.nix-relay.${s.what} must be an absolute file path outside ${builtins.storeDir} (secrets are files, never inline values or store paths); got \"${toString s.v}\".";
      }) secretSettings
      ++ lib.mapAttrsToList (name: v: {
        assertion = secretPathOk v;
        message = "services.nix-relay.${name} must be a string path outside ${builtins.storeDir}, e.g. \"/run/keys/...\" (a Nix path literal would copy the secret into the store); got \"${toString v}\".";
      }) fileOptions;

      users.users.nix-relay = {
        isSystemUser = true;
        group = "nix-relay";
        home = stateDir;
        description = "nix-relay daemon";
      };
      users.groups.nix-relay = { };

      # `nix-relay status`, `machines-entry --config /etc/nix-relay/relay.toml`, `check-config`.
      environment.systemPackages = [ cfg.package ];
      environment.etc."nix-relay/relay.toml".source = configFile;

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall ([ sshPort ] ++ optional (httpPort != null) httpPort);

      systemd.services.nix-relay = {
        description = "nix-relay: one SSH endpoint for Nix remote builds";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ] ++ optional hasLocal "nix-daemon.socket";
        wants = optional hasLocal "nix-daemon.socket";
        # A `local` backend runs `nix-store --serve --write` as a subprocess.
        path = optionals hasLocal [ config.nix.package ];
        environment = lib.optionalAttrs (cfg.ec2CredentialsFile != null) {
          AWS_SHARED_CREDENTIALS_FILE = cred "aws_credentials";
        };

        # A change to the backends alone reloads (running builds survive);
        # any other change restarts.
        reloadTriggers = [ backendsPart ];
        restartTriggers = [ restPart ];

        serviceConfig = {
          # The /etc link, not the store file: on SIGHUP the relay re-reads
          # this path, which `nixos-rebuild switch` has pointed at the new file.
          ExecStart = "${cfg.package}/bin/nix-relay serve --config /etc/nix-relay/relay.toml";
          # SIGHUP: re-read the backends (add, remove, change) without
          # dropping running builds.
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          Restart = "on-failure";
          RestartSec = "5s";
          User = "nix-relay";
          Group = "nix-relay";
          # toString: never copy a file into the store (assertions refuse those anyway).
          LoadCredential = lib.mapAttrsToList (name: file: "${name}:${toString file}") credentials;
          # max_sessions (default 256) sessions, each with sockets and NAR files.
          LimitNOFILE = 65536;

          # Hardening. The relay needs: its state dir, outbound TCP to the
          # backends, inbound TCP, and (local backends only) the nix-daemon
          # socket. Everything else is taken away.
          ReadWritePaths = [ stateDir ] ++ optional hasLocal "/nix/var/nix/daemon-socket";
          UMask = "0077";
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          NoNewPrivileges = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RemoveIPC = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
          # A filtered call fails with EPERM instead of killing the process:
          # nix-store (local backends) tries setrlimit(RLIMIT_STACK) at start.
          SystemCallErrorNumber = "EPERM";
          # No capabilities at all, unless a listen port is below 1024.
          CapabilityBoundingSet = if needsBind then [ "CAP_NET_BIND_SERVICE" ] else "";
        }
        // lib.optionalAttrs needsBind { AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ]; }
        // lib.optionalAttrs (lib.hasPrefix "/var/lib/" stateDir) {
          StateDirectory = lib.removePrefix "/var/lib/" stateDir;
          StateDirectoryMode = "0750";
        };
      };
    }

    (mkIf (!(lib.hasPrefix "/var/lib/" stateDir)) {
      systemd.tmpfiles.rules = [ "d ${stateDir} 0750 nix-relay nix-relay - -" ];
    })

    # A `local` backend is the nix-daemon of this machine, reached through
    # its socket (ReadWritePaths above) as the nix-relay user. The relay
    # uploads unsigned inputs and builds input-addressed derivations, so
    # that user must be trusted by the daemon, like nix-builder on remote
    # backends. Leave `store` unset for local backends under this module:
    # a chroot store would have to build without the daemon, which the
    # sandboxing above (no namespaces, no privileges) does not allow.
    (mkIf hasLocal {
      nix.settings.trusted-users = [ "root" "nix-relay" ];
    })
  ]);
}
