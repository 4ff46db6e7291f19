# Evaluation test of nixos/{module,builder,client}.nix and of the node
# configurations in nixos/tests/vm.nix, against the stand-in in ./stub.nix.
#
#   NIX_PATH= nix-instantiate --eval --strict --json --readonly-mode tests/nixos/eval.nix
#
# Every expectation is checked here; a mismatch throws with its name. The
# result is a summary plus the generated TOML files (tests/nixos/check.sh
# feeds those to `nix-relay check-config` when a built relay is at hand).
let
  stub = import ./stub.nix;
  inherit (stub) lib pkgs evalModule checkBuildMachine;
  inherit (builtins) toJSON elem all filter length match attrNames;

  nixos = ../../nixos;
  keys = nixos + "/tests/keys";
  readKey = name: lib.removeSuffix "\n" (builtins.readFile (keys + "/${name}"));

  # --- the check helpers: each returns its name or throws.
  eq = name: actual: expected:
    if actual == expected then name
    else throw "eval.nix: ${name}: expected ${toJSON expected}, got ${toJSON actual}";
  ok = name: cond: eq name cond true;
  # substring tests without regular expressions
  count = needle: haystack:
    (builtins.stringLength haystack - builtins.stringLength (builtins.replaceStrings [ needle ] [ "" ] haystack))
    / builtins.stringLength needle;
  contains = needle: haystack: count needle haystack > 0;
  has = name: haystack: needle:
    if contains needle haystack then name
    else throw "eval.nix: ${name}: ${toJSON needle} not in:\n${haystack}";
  lacks = name: haystack: needle:
    if !(contains needle haystack) then name
    else throw "eval.nix: ${name}: ${toJSON needle} unexpectedly in:\n${haystack}";
  fails = name: messages: needle:
    if builtins.any (contains needle) messages then name
    else throw "eval.nix: ${name}: no failed assertion mentions ${toJSON needle}; failed: ${toJSON messages}";
  throws = name: value:
    if (builtins.tryEval (builtins.deepSeq value value)).success
    then throw "eval.nix: ${name}: expected an evaluation error" else name;

  nixPackage = { name = "nix-2.18.1"; outPath = "${builtins.storeDir}/00000000000000000000000000000000-nix-2.18.1"; };
  base = { nix.package = nixPackage; };
  cred = name: "/run/credentials/nix-relay.service/${name}";

  # ------------------------------------------------------------ relay
  relay = cfg: evalModule (nixos + "/module.nix") (base // { services.nix-relay = cfg; });

  opi = {
    name = "opi01";
    uri = "ssh://nix-builder@opi01.internal:22";
    host_key = readKey "builder_host_ed25519_key.pub";
    systems = [ "aarch64-linux" ];
    max_jobs = 4;
    speed_factor = 1.0;
    supported_features = [ "big-parallel" ];
  };
  local = {
    name = "ser5";
    uri = "local";
    systems = [ "x86_64-linux" ];
    max_jobs = 12;
    speed_factor = 4.0;
    supported_features = [ "big-parallel" "kvm" "nixos-test" "benchmark" ];
  };
  calypso = { name = "calypso"; key = readKey "id_client.pub"; trusted = true; };

  full = relay {
    enable = true;
    openFirewall = true;
    hostKeyFile = "/run/keys/nix-relay-host-key";
    signingKeyFile = "/run/keys/nix-relay-cache-key";
    builderKeyFile = "/run/keys/nix-relay-builder";
    ec2CredentialsFile = "/run/keys/aws-credentials";
    settings = {
      client = [ calypso ];
      backend = [ local opi ];
      cache.max_size = "200GiB";
    };
  };
  svc = full.out.systemd.services.nix-relay;
  sc = svc.serviceConfig;
  toml = full.out.environment.etc."nix-relay/relay.toml".source.text;

  hardening = {
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    NoNewPrivileges = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    CapabilityBoundingSet = "";
    UMask = "0077";
  };

  relayChecks = [
    (eq "relay: no failed assertions" full.failed [ ])
    (ok "relay: ExecStart = <package>/bin/nix-relay serve --config /etc/nix-relay/relay.toml"
      (match "${builtins.storeDir}/[^/]*-nix-relay-0.1.0/bin/nix-relay serve --config /etc/nix-relay/relay.toml" sc.ExecStart != null))
    (ok "relay: /etc/nix-relay/relay.toml is the generated TOML"
      (match "${builtins.storeDir}/[^/]*-nix-relay.toml" full.out.environment.etc."nix-relay/relay.toml".source.outPath != null))
    (eq "relay: hardening" (builtins.intersectAttrs hardening sc) hardening)
    (eq "relay: ReadWritePaths (state dir + daemon socket for the local backend)" sc.ReadWritePaths [ "/var/lib/nix-relay" "/nix/var/nix/daemon-socket" ])
    (eq "relay: StateDirectory" sc.StateDirectory "nix-relay")
    (eq "relay: Restart" sc.Restart "on-failure")
    (ok "relay: ExecReload sends SIGHUP" (match ".*/bin/kill -HUP [$]MAINPID" sc.ExecReload != null))
    (ok "relay: backends are a reload trigger, the rest a restart trigger"
      (match ".*\"uri\".*" (builtins.head svc.reloadTriggers) != null
        && match ".*\"backend\".*" (builtins.head svc.restartTriggers) == null
        && match ".*\"server\".*" (builtins.head svc.restartTriggers) != null))
    (ok "relay: no AmbientCapabilities for ports >= 1024" (!(sc ? AmbientCapabilities)))
    (eq "relay: User/Group" [ sc.User sc.Group ] [ "nix-relay" "nix-relay" ])
    (ok "relay: no DynamicUser" (!(sc ? DynamicUser)))
    (eq "relay: LoadCredential" sc.LoadCredential [
      "aws_credentials:/run/keys/aws-credentials"
      "builder_key:/run/keys/nix-relay-builder"
      "host_key:/run/keys/nix-relay-host-key"
      "signing_key:/run/keys/nix-relay-cache-key"
    ])
    (eq "relay: AWS_SHARED_CREDENTIALS_FILE" svc.environment.AWS_SHARED_CREDENTIALS_FILE (cred "aws_credentials"))
    (eq "relay: nix on PATH for the local backend" svc.path [ nixPackage ])
    (ok "relay: ordered after nix-daemon.socket" (elem "nix-daemon.socket" svc.after))
    (eq "relay: nix-relay trusted by the local daemon" full.out.nix.settings.trusted-users [ "root" "nix-relay" ])
    (eq "relay: firewall" full.out.networking.firewall.allowedTCPPorts [ 2222 5000 ])
    (eq "relay: system user" (with full.out.users.users.nix-relay; [ isSystemUser group home ]) [ true "nix-relay" "/var/lib/nix-relay" ])
    (ok "relay: group" (full.out.users.groups ? nix-relay))
    (eq "relay: package in systemPackages" (map (p: p.name) full.out.environment.systemPackages) [ "nix-relay-0.1.0" ])
    (has "relay: toml [server]" toml ''
      [server]
      host_key = "${cred "host_key"}"
      listen = "0.0.0.0:2222"
      state_dir = "/var/lib/nix-relay"
    '')
    (has "relay: toml [cache] signing key + freeform key" toml ''
      [cache]
      max_size = "200GiB"
      signing_key = "${cred "signing_key"}"
    '')
    (has "relay: toml [http]" toml "[http]\nlisten = \"0.0.0.0:5000\"\n")
    (has "relay: toml [[client]]" toml "[[client]]\nkey = \"${calypso.key}\"\nname = \"calypso\"\ntrusted = true\n")
    (has "relay: toml local [[backend]] (no ssh_key)" toml "[[backend]]\nmax_jobs = 12\nname = \"ser5\"\nspeed_factor = 4\n")
    (has "relay: toml ssh [[backend]] gets the builder key" toml "ssh_key = \"${cred "builder_key"}\"\nsupported_features = [\"big-parallel\"]\nsystems = [\"aarch64-linux\"]\nuri = \"ssh://nix-builder@opi01.internal:22\"\n")
    (eq "relay: exactly one ssh_key (local backends get none)" (count "ssh_key" toml) 1)
    (eq "relay: config seen: typed defaults" (with full.config.services.nix-relay.settings; [ server.listen server.state_dir http.listen ])
      [ "0.0.0.0:2222" "/var/lib/nix-relay" "0.0.0.0:5000" ])
  ];

  # Variations.
  off = relay { settings.backend = [ local ]; };
  minimal = relay {
    enable = true;
    settings = { client = [ calypso ]; backend = [ (opi // { ssh_key = "/var/lib/nix-relay/id_builder"; }) ]; };
  };
  minSc = minimal.out.systemd.services.nix-relay.serviceConfig;
  minToml = minimal.out.environment.etc."nix-relay/relay.toml".source.text;
  lowPorts = relay {
    enable = true;
    openFirewall = true;
    settings = {
      server = { listen = "[::]:22"; authorized_keys = "/etc/nix-relay/authorized_keys"; state_dir = "/srv/nix-relay"; };
      http.listen = null;
      backend = [ local ];
    };
  };
  lowSc = lowPorts.out.systemd.services.nix-relay.serviceConfig;
  lowToml = lowPorts.out.environment.etc."nix-relay/relay.toml".source.text;
  noBackend = relay { enable = true; settings.client = [ calypso ]; };
  noClient = relay { enable = true; settings.backend = [ local ]; };
  storeSecrets = relay {
    enable = true;
    signingKeyFile = "${builtins.storeDir}/00000000000000000000000000000000-cache-key";
    hostKeyFile = ./eval.nix; # a Nix path literal: would be copied to the store
    settings = {
      client = [ calypso ];
      backend = [ (opi // { ssh_key = "${builtins.storeDir}/00000000000000000000000000000000-id"; }) ];
    };
  };
  inlineSecret = relay {
    enable = true;
    settings = { client = [ calypso ]; backend = [ local ]; cache.signing_key = "ser5-1:c2VjcmV0IGJ5dGVz"; };
  };

  # An ssh-ng:// backend needs ssh_key like an ssh:// one (the relay refuses
  # to start without it).
  ngBackend = relay {
    enable = true;
    builderKeyFile = "/run/keys/nix-relay-builder";
    settings = { client = [ calypso ]; backend = [ (opi // { uri = "ssh-ng://nix-builder@opi01.internal"; }) local ]; };
  };
  ngToml = ngBackend.out.environment.etc."nix-relay/relay.toml".source.text;

  variationChecks = [
    (has "ssh-ng backend: gets the builder key" ngToml
      "ssh_key = \"${cred "builder_key"}\"\nsupported_features = [\"big-parallel\"]\nsystems = [\"aarch64-linux\"]\nuri = \"ssh-ng://nix-builder@opi01.internal\"\n")
    (eq "ssh-ng backend: exactly one ssh_key (local backends get none)" (count "ssh_key" ngToml) 1)
    (eq "off: enable = false produces nothing" off.out { })
    (eq "minimal: no failed assertions" minimal.failed [ ])
    (eq "minimal: no credentials" minSc.LoadCredential [ ])
    (eq "minimal: no firewall change" (minimal.out.networking.firewall.allowedTCPPorts or null) null)
    (eq "minimal: no nix on PATH without a local backend" minimal.out.systemd.services.nix-relay.path [ ])
    (eq "minimal: local daemon trust only for local backends" (minimal.out.nix or null) null)
    (eq "minimal: ReadWritePaths" minSc.ReadWritePaths [ "/var/lib/nix-relay" ])
    (has "minimal: explicit ssh_key kept" minToml "ssh_key = \"/var/lib/nix-relay/id_builder\"")
    (lacks "minimal: no host_key in [server] when the relay creates it" minToml (cred "host_key"))
    (lacks "minimal: no [cache] when nothing is set" minToml "[cache]")
    (eq "low ports: no failed assertions (authorized_keys instead of [[client]])" lowPorts.failed [ ])
    (eq "low ports: firewall" lowPorts.out.networking.firewall.allowedTCPPorts [ 22 ])
    (eq "low ports: CAP_NET_BIND_SERVICE" [ lowSc.CapabilityBoundingSet lowSc.AmbientCapabilities ]
      [ [ "CAP_NET_BIND_SERVICE" ] [ "CAP_NET_BIND_SERVICE" ] ])
    (lacks "low ports: http.listen = null: no [http]" lowToml "[http]")
    (ok "state dir outside /var/lib: no StateDirectory" (!(lowSc ? StateDirectory)))
    (eq "state dir outside /var/lib: tmpfiles + ReadWritePaths" [ lowPorts.out.systemd.tmpfiles.rules lowSc.ReadWritePaths ]
      [ [ "d /srv/nix-relay 0750 nix-relay nix-relay - -" ] [ "/srv/nix-relay" "/nix/var/nix/daemon-socket" ] ])
    (eq "state dir outside /var/lib: user home" lowPorts.out.users.users.nix-relay.home "/srv/nix-relay")
    (fails "assert: no backend" noBackend.failed "services.nix-relay.settings.backend must list at least one backend")
    (fails "assert: no clients" noClient.failed "settings.client")
    (fails "assert: signingKeyFile in the store" storeSecrets.failed "services.nix-relay.signingKeyFile must be a string path outside")
    (fails "assert: hostKeyFile as a Nix path literal" storeSecrets.failed "services.nix-relay.hostKeyFile must be a string path outside")
    (fails "assert: backend ssh_key in the store" storeSecrets.failed "settings.backend (opi01).ssh_key must be an absolute file path outside")
    (fails "assert: inline signing key" inlineSecret.failed "settings.cache.signing_key must be an absolute file path")
    (throws "types: listen must be a string" (relay { enable = true; settings.server.listen = 2222; }).config.services.nix-relay.settings.server.listen)
    (throws "types: unknown option" (relay { enable = true; enabel = true; }).config.services.nix-relay)
  ];

  # ------------------------------------------------------------ client
  client = cfg: evalModule (nixos + "/client.nix") (base // { services.nix-relay-client = cfg; });
  calypsoClient = client {
    enable = true;
    host = "ser5.internal";
    systems = [ "x86_64-linux" "aarch64-linux" ];
    maxJobs = 16;
    supportedFeatures = [ "big-parallel" "benchmark" "nixos-test" "kvm" ];
    sshKey = "/etc/nix/id_relay";
    publicHostKey = readKey "relay_host_ed25519_key.pub.base64";
    cacheUrl = "http://ser5.internal:5000";
    cachePublicKey = readKey "cache-key.pub";
  };
  c = calypsoClient.out;
  clientChecks = [
    (eq "client: no failed assertions" calypsoClient.failed [ ])
    (eq "client: buildMachines" c.nix.buildMachines [
      {
        hostName = "ser5.internal";
        protocol = "ssh-ng";
        sshUser = "nix-relay";
        sshKey = "/etc/nix/id_relay";
        systems = [ "x86_64-linux" "aarch64-linux" ];
        maxJobs = 16;
        speedFactor = 1;
        supportedFeatures = [ "big-parallel" "benchmark" "nixos-test" "kvm" ];
        mandatoryFeatures = [ ];
        publicHostKey = readKey "relay_host_ed25519_key.pub.base64";
      }
    ])
    (eq "client: distributedBuilds" c.nix.distributedBuilds true)
    (eq "client: builders-use-substitutes" c.nix.settings.builders-use-substitutes true)
    (eq "client: substituters" c.nix.settings.substituters [ "http://ser5.internal:5000" ])
    (eq "client: trusted-public-keys" c.nix.settings.trusted-public-keys [ (readKey "cache-key.pub") ])
    (eq "client: ssh block for root (port, host key alias, multiplexing)" c.programs.ssh.extraConfig ''
      Match originalhost ser5.internal localuser root
        Port 2222
        HostKeyAlias ser5.internal
        ControlMaster auto
        ControlPath /run/nix-relay-client/%C
        ControlPersist 10m
      Match all
    '')
    (ok "client: nixpkgs' nix.buildMachines type accepts the entry"
      (all (m: builtins.deepSeq (checkBuildMachine 0 m) true) c.nix.buildMachines))
    (eq "client: speedFactor 1.5 accepted (a positive number, as nixpkgs declares it)"
      (map (m: (checkBuildMachine 0 m).speedFactor) (client { enable = true; host = "r"; systems = [ "x86_64-linux" ]; speedFactor = 1.5; }).out.nix.buildMachines)
      [ 1.5 ])
    (throws "client: speedFactor 0 refused at eval"
      (client { enable = true; host = "r"; systems = [ "x86_64-linux" ]; speedFactor = 0; }).config.services.nix-relay-client.speedFactor)
    (throws "stub: nixpkgs' buildMachines type refuses speedFactor 0 (what the client option now catches first)"
      (checkBuildMachine 0 { hostName = "r"; speedFactor = 0; }))
    (eq "client: protocol defaults to ssh-ng"
      (map (m: m.protocol) (client { enable = true; host = "r"; systems = [ "x86_64-linux" ]; }).out.nix.buildMachines) [ "ssh-ng" ])
    (eq "client: control directory for root's multiplexed ssh" c.systemd.tmpfiles.rules [ "d /run/nix-relay-client 0700 root root - -" ])
    (eq "client: controlPersist = null: no multiplexing"
      (let o = (client { enable = true; host = "r"; systems = [ "x86_64-linux" ]; controlPersist = null; }).out;
        in [ o.programs.ssh.extraConfig (o.systemd or null) ])
      [ "Match originalhost r localuser root\n  Port 2222\n  HostKeyAlias r\nMatch all\n" null ])
    (eq "client: no cache, no substituter" ((client { enable = true; host = "r"; systems = [ "x86_64-linux" ]; }).out.nix.settings ? substituters) false)
    (fails "client: cacheUrl needs cachePublicKey"
      (client { enable = true; host = "r"; systems = [ "x86_64-linux" ]; cacheUrl = "http://r:5000"; }).failed "cachePublicKey must be set")
    (throws "client: protocol is ssh or ssh-ng"
      (client { enable = true; host = "r"; systems = [ ]; protocol = "http"; }).config.services.nix-relay-client.protocol)
  ];

  # ------------------------------------------------------------ builder
  builder = cfg: evalModule (nixos + "/builder.nix") (base // { services.nix-relay-builder = cfg; });
  opi01 = builder { enable = true; relayPublicKey = readKey "id_builder.pub"; };
  b = opi01.out;
  builderChecks = [
    (eq "builder: user" (with b.users.users.nix-builder; [ isSystemUser group useDefaultShell ]) [ true "nix-builder" true ])
    (eq "builder: authorized key, restricted to nix-daemon --stdio (ssh-ng://, the default)" b.users.users.nix-builder.openssh.authorizedKeys.keys
      [ "restrict,command=\"${nixPackage}/bin/nix-daemon --stdio\" ${readKey "id_builder.pub"}" ])
    (eq "builder: protocol = ssh: restricted to nix-store --serve --write"
      (builder { enable = true; relayPublicKey = "ssh-ed25519 AAAA"; protocol = "ssh"; }).out.users.users.nix-builder.openssh.authorizedKeys.keys
      [ "restrict,command=\"${nixPackage}/bin/nix-store --serve --write\" ssh-ed25519 AAAA" ])
    (throws "builder: protocol is ssh or ssh-ng"
      (builder { enable = true; relayPublicKey = "k"; protocol = "local"; }).config.services.nix-relay-builder.protocol)
    (eq "builder: trusted user" b.nix.settings.trusted-users [ "root" "nix-builder" ])
    (eq "builder: no cacheUrl, no substituter added" b.nix.settings.substituters [ ])
    (eq "builder: the relay's cache as a substituter"
      (with (builder { enable = true; relayPublicKey = "k"; cacheUrl = "http://r:5000"; cachePublicKey = "r-1:AAAA"; }).out.nix.settings; [ substituters trusted-public-keys ])
      [ [ "http://r:5000" ] [ "r-1:AAAA" ] ])
    (fails "builder: cacheUrl needs cachePublicKey"
      (builder { enable = true; relayPublicKey = "k"; cacheUrl = "http://r:5000"; }).failed "cachePublicKey must be set")
    (eq "builder: openssh" b.services.openssh.enable true)
    (eq "builder: gc" b.nix.gc { automatic = true; dates = "weekly"; options = "--delete-older-than 14d"; })
    (eq "builder: min-free / max-free" [ b.nix.settings.min-free b.nix.settings.max-free ] [ (5 * 1073741824) (20 * 1073741824) ])
    (eq "builder: other user, unrestricted command"
      (builder { enable = true; relayPublicKey = "ssh-ed25519 AAAA"; user = "nb"; restrictCommand = false; }).out.users.users.nb.openssh.authorizedKeys.keys
      [ "restrict ssh-ed25519 AAAA" ])
  ];

  # ------------------------------------------------------------ VM test nodes
  # Each node is evaluated with the module it imports, its services.* block
  # as the user configuration; the testScript is rendered to force every
  # interpolation in it.
  vm = import (nixos + "/tests/vm.nix") { inherit pkgs; };
  extraUtils = { name = "extra-utils"; outPath = "${builtins.storeDir}/00000000000000000000000000000000-extra-utils"; };
  node = name: service:
    let
      nodeConfig = base // { system.build.extraUtils = extraUtils; services.${service} = (evalModule m user).config.services.${service}; };
      defs = vm.nodes.${name} { config = nodeConfig; inherit lib pkgs; };
      m = builtins.head defs.imports;
      user = base // { services.${service} = defs.services.${service}; };
    in
    { inherit defs; eval = evalModule m user; };
  vmRelay = node "relay" "nix-relay";
  vmClient = node "client" "nix-relay-client";
  vmBuilder = node "builder" "nix-relay-builder";
  vmToml = vmRelay.eval.out.environment.etc."nix-relay/relay.toml".source.text;
  script = vm.testScript { nodes.client.system.build.extraUtils = extraUtils; };
  vmChecks = [
    (eq "vm: imports" (map (n: baseNameOf (toString (builtins.head n.defs.imports))) [ vmRelay vmClient vmBuilder ])
      [ "module.nix" "client.nix" "builder.nix" ])
    (eq "vm relay: no failed assertions" vmRelay.eval.failed [ ])
    (eq "vm client: no failed assertions" vmClient.eval.failed [ ])
    (has "vm relay: backend 'builder' with the builder key credential" vmToml
      "[[backend]]\nhost_key = \"${readKey "builder_host_ed25519_key.pub"}\"\nmax_jobs = 2\nname = \"builder\"\nssh_key = \"${cred "builder_key"}\"\n")
    (ok "vm relay: secrets are files outside the store" (all (v: lib.hasPrefix "/etc/nix-relay-test/" v)
      (with vmRelay.defs.services.nix-relay; [ hostKeyFile signingKeyFile builderKeyFile ])))
    (ok "vm relay: the secrets exist under /etc" (all (n: vmRelay.defs.environment.etc ? "nix-relay-test/${n}") [ "ssh_host_ed25519_key" "cache-key" "id_builder" ]))
    (eq "vm client: buildMachines host" (map (m: [ m.hostName m.protocol ]) vmClient.eval.out.nix.buildMachines) [ [ "relay" "ssh-ng" ] ])
    (eq "vm client: cache key = relay's signing key" vmClient.defs.services.nix-relay-client.cachePublicKey
      (readKey "cache-key.pub"))
    (ok "vm: the relay's backend scheme is the builder's protocol (its key runs that command)"
      (lib.hasPrefix "${vmBuilder.eval.config.services.nix-relay-builder.protocol}://" (builtins.head vmRelay.defs.services.nix-relay.settings.backend).uri
        && contains (if vmBuilder.eval.config.services.nix-relay-builder.protocol == "ssh-ng" then "nix-daemon --stdio" else "nix-store --serve --write")
          (builtins.head vmBuilder.eval.out.users.users.nix-builder.openssh.authorizedKeys.keys)))
    (eq "vm builder: relay key authorized" (builtins.length vmBuilder.eval.out.users.users.nix-builder.openssh.authorizedKeys.keys) 1)
    (ok "vm builder: host key pinned by the relay is the one installed"
      (vmBuilder.defs.environment.etc."ssh/test_host_ed25519_key".source == keys + "/builder_host_ed25519_key"))
    (has "vm script: builds with --max-jobs 0" script "--max-jobs 0")
    (has "vm script: expression file" script "-nix-relay-test-expr.nix")
  ];

  # ------------------------------------------------------------ package
  # package.nix with a recording rustPlatform; its source filter applied to
  # paths of the checkout (the filter, not the copy, is what is checked).
  package = import (nixos + "/package.nix") {
    lib = lib // { cleanSourceWith = a: a; cleanSourceFilter = _: _: true; };
    rustPlatform.buildRustPackage = a: a;
  };
  kept = path: type: package.src.filter "/src/nix-relay/${path}" type;
  packageChecks = [
    (eq "package: .git (directory in a clone, file in a worktree) left out" [ (kept ".git" "directory") (kept ".git" "regular") ] [ false false ])
    (eq "package: target/, fuzz/, nixos/ left out" (map (d: kept d "directory") [ "target" "fuzz" "nixos" ]) [ false false false ])
    (eq "package: Cargo.toml, src/, wire/ kept" [ (kept "Cargo.toml" "regular") (kept "src" "directory") (kept "wire" "directory") ] [ true true true ])
  ];

  all_ = packageChecks ++ relayChecks ++ variationChecks ++ clientChecks ++ builderChecks ++ vmChecks;
in
{
  passed = length all_;
  checks = all_;
  # For tests/nixos/check.sh: `nix-relay check-config` on what the module writes.
  tomls = { sample = toml; minimal = minToml; ssh-ng-backend = ngToml; low-ports = lowToml; vm-relay = vmToml; };
}
