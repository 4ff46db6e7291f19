# NixOS VM test: a client builds through the relay on a builder, then
# substitutes the output from the relay's signed HTTP cache.
#
#   nix-build nixos -A tests.vm                    # needs nixpkgs and KVM
#   nix build ./nixos#checks.x86_64-linux.vm
#
# Not run by tests/run.sh (no nixpkgs there); tests/nixos/eval.nix evaluates
# the three node configurations below against the modules.
#
# The keys in ./keys are TEST-ONLY, committed on purpose (keys/README.md).
# They reach the machines as copies under /etc (mode 0400), i.e. as paths
# outside /nix/store, the way real secrets reach the modules.
{ pkgs ? import <nixpkgs> { } }:

let
  keyFile = name: ./keys + "/${name}";
  readKey = name: pkgs.lib.removeSuffix "\n" (builtins.readFile (keyFile name));
  secret = name: { source = keyFile name; mode = "0400"; };

  # Unique, so no cache anywhere has it.
  marker = "nix-relay-vm-test-5c0ffee";
  system = pkgs.stdenv.hostPlatform.system;
  features = [ "benchmark" "big-parallel" "nixos-test" ];

  # A derivation whose builder is in the client's store (extraUtils, added
  # with virtualisation.additionalPaths): the relay has to push it to the
  # builder, and no stdenv is needed anywhere.
  expr = extraUtils: pkgs.writeText "nix-relay-test-expr.nix" ''
    let utils = builtins.storePath ${extraUtils}; in
    derivation {
      name = "nix-relay-test";
      system = builtins.currentSystem;
      PATH = "''${utils}/bin";
      builder = "''${utils}/bin/sh";
      args = [ "-c" "mkdir $out; echo ${marker} > $out/marker" ];
    }
  '';

  test = {
    name = "nix-relay";

    nodes.relay = { ... }: {
      imports = [ ../module.nix ];
      environment.etc."nix-relay-test/ssh_host_ed25519_key" = secret "relay_host_ed25519_key";
      environment.etc."nix-relay-test/cache-key" = secret "cache-key";
      environment.etc."nix-relay-test/id_builder" = secret "id_builder";
      services.nix-relay = {
        enable = true;
        openFirewall = true;
        hostKeyFile = "/etc/nix-relay-test/ssh_host_ed25519_key";
        signingKeyFile = "/etc/nix-relay-test/cache-key";
        builderKeyFile = "/etc/nix-relay-test/id_builder";
        settings = {
          client = [ { name = "client"; key = readKey "id_client.pub"; trusted = true; } ];
          backend = [
            {
              name = "builder";
              uri = "ssh-ng://nix-builder@builder:22";  # the builder runs nix-daemon --stdio (its protocol default)
              host_key = readKey "builder_host_ed25519_key.pub";
              systems = [ system ];
              max_jobs = 2;
              supported_features = features;
            }
          ];
        };
      };
    };

    nodes.builder = { ... }: {
      imports = [ ../builder.nix ];
      services.nix-relay-builder = {
        enable = true;
        relayPublicKey = readKey "id_builder.pub";
      };
      # A fixed host key, so the relay can pin it.
      environment.etc."ssh/test_host_ed25519_key" = secret "builder_host_ed25519_key";
      services.openssh.hostKeys = [ { path = "/etc/ssh/test_host_ed25519_key"; type = "ed25519"; } ];
    };

    nodes.client = { config, lib, pkgs, ... }: {
      imports = [ ../client.nix ];
      services.nix-relay-client = {
        enable = true;
        host = "relay";
        port = 2222;
        systems = [ system ];
        maxJobs = 2;
        supportedFeatures = features;
        sshKey = "/etc/nix/id_relay";
        publicHostKey = readKey "relay_host_ed25519_key.pub.base64";
        cacheUrl = "http://relay:5000";
        cachePublicKey = readKey "cache-key.pub";
      };
      environment.etc."nix/id_relay" = secret "id_client";
      environment.systemPackages = [ pkgs.curl ];
      # No internet in the test network: the relay is the only substituter.
      nix.settings.substituters = lib.mkForce [ "http://relay:5000" ];
      virtualisation.additionalPaths = [ config.system.build.extraUtils ];
    };

    testScript = { nodes, ... }: ''
      start_all()

      builder.wait_for_unit("sshd.service")
      builder.wait_for_open_port(22)
      relay.wait_for_unit("nix-relay.service")
      relay.wait_for_open_port(2222)
      relay.wait_for_open_port(5000)
      client.wait_for_unit("multi-user.target")

      with subtest("relay: config, credentials, firewall"):
          relay.succeed("grep -F 'host_key = \"/run/credentials/nix-relay.service/host_key\"' /etc/nix-relay/relay.toml")
          relay.succeed("grep -F 'ssh_key = \"/run/credentials/nix-relay.service/builder_key\"' /etc/nix-relay/relay.toml")
          # the given keys are used, none is created in the state dir
          relay.succeed("test ! -e /var/lib/nix-relay/ssh_host_ed25519_key")
          relay.succeed("test ! -e /var/lib/nix-relay/cache-priv-key.pem")
          entry = relay.succeed("nix-relay machines-entry --config /etc/nix-relay/relay.toml")
          assert "${readKey "relay_host_ed25519_key.pub.base64"}" in entry, entry
          relay.log(relay.succeed("systemd-analyze security nix-relay.service | tail -n 1"))
          client.succeed("curl -fsS http://relay:5000/nix-cache-info")
          client.succeed("curl -fsS http://relay:5000/healthz")

      with subtest("build on the builder through the relay"):
          out = client.succeed(
              "nix-build ${expr nodes.client.system.build.extraUtils} --no-out-link --max-jobs 0 2> /tmp/build.log"
          ).strip()
          client.log(client.succeed("cat /tmp/build.log"))
          client.succeed("grep -F 'nix-relay: building' /tmp/build.log")
          client.succeed("grep -F 'on builder' /tmp/build.log")
          client.succeed(f"grep -Fx ${marker} {out}/marker")
          # built there, not here (--max-jobs 0) and not on the relay (no nix builds there)
          builder.succeed(f"nix-store --check-validity {out}")
          builder.succeed(f"grep -Fx ${marker} {out}/marker")
          relay.succeed("nix-relay status | grep -F builder")

      with subtest("substitute from the relay's signed cache"):
          hash = out.removeprefix("/nix/store/").split("-")[0]
          client.succeed(f"curl -fsS http://relay:5000/{hash}.narinfo | grep -F 'Sig: relay-test-1:'")
          client.succeed(f"nix-store --delete {out}")
          client.fail(f"nix-store --check-validity {out}")
          # no builders: the only way back is the cache (require-sigs is on)
          client.succeed(f"nix-store --realise {out} --option builders ''' 2> /tmp/subst.log")
          client.log(client.succeed("cat /tmp/subst.log"))
          client.succeed("grep -F 'http://relay:5000' /tmp/subst.log")
          client.succeed(f"grep -Fx ${marker} {out}/marker")
    '';
  };
in
# runNixOSTest: nixpkgs >= 23.05; nixosTest before that.
(pkgs.testers.runNixOSTest or pkgs.nixosTest) test
