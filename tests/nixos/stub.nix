# A small stand-in for nixpkgs' lib, pkgs and module system, enough to
# evaluate nixos/{module,builder,client}.nix and the node configurations of
# nixos/tests/vm.nix without nixpkgs (not reachable from the test machine).
#
# lib: exactly the surface the modules list in their headers, with the same
# semantics as nixpkgs for the values they use it on.
# Module system: one module, evaluated against one user configuration:
#   - options: defaults applied, values type-checked (leaf `check`), unknown
#     keys next to declared options refused, freeform submodules keep them;
#   - config: mkIf / mkMerge / mkOverride resolved, attribute sets merged
#     recursively, lists concatenated, equal values deduplicated, anything
#     else conflicting throws. Priorities are ignored (one definition each).
# Not modelled: imports between modules, option merging across modules,
# `apply`, priorities. The real thing is exercised by nixos/tests/vm.nix.
let
  inherit (builtins) isAttrs isList isString isBool isInt isFloat isPath
    attrNames concatStringsSep filter all map stringLength substring toJSON;

  lib = rec {
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = what: mkOption {
      type = types.bool;
      default = false;
      description = "Whether to enable ${what}.";
    };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;

    types = rec {
      mk = name: check: { _type = "type"; inherit name check; };
      bool = mk "boolean" isBool;
      str = mk "string" isString;
      lines = str;
      int = mk "signed integer" isInt;
      float = mk "floating point number" isFloat;
      # nixpkgs: number = either int float; numbers.positive = addCheck
      # number (x: x > 0), with these descriptions (lib/types.nix).
      number = mk "integer or floating point number" (v: isInt v || isFloat v);
      numbers.positive = mk "positive integer or floating point number, meaning >0"
        (v: number.check v && v > 0);
      port = mk "16 bit unsigned integer" (v: isInt v && v >= 0 && v <= 65535);
      path = mk "path" (v: isPath v || (isString v && substring 0 1 v == "/"));
      package = mk "package" (v: isAttrs v && v ? outPath);
      anything = mk "anything" (_: true);
      enum = vs: mk "one of ${toJSON vs}" (v: builtins.elem v vs);
      nullOr = t: mk "null or ${t.name}" (v: v == null || t.check v);
      listOf = t: mk "list of ${t.name}" (v: isList v && all t.check v);
      attrsOf = t: mk "attribute set of ${t.name}" (v: isAttrs v && all t.check (builtins.attrValues v));
      submodule = module: mk "submodule" isAttrs // { inherit module; };
    };

    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalAttrs = c: set: if c then set else { };
    optionalString = c: s: if c then s else "";
    hasPrefix = pre: s: substring 0 (stringLength pre) s == pre;
    hasSuffix = suf: s:
      let n = stringLength s; m = stringLength suf;
      in n >= m && substring (n - m) m s == suf;
    removePrefix = pre: s:
      if hasPrefix pre s then substring (stringLength pre) (stringLength s) s else s;
    removeSuffix = suf: s:
      if hasSuffix suf s then substring 0 (stringLength s - stringLength suf) s else s;
    any = builtins.any;
    filterAttrs = pred: set: builtins.listToAttrs (builtins.concatMap
      (n: if pred n set.${n} then [ { name = n; value = set.${n}; } ] else [ ])
      (attrNames set));
    mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
    concatStringsSep = builtins.concatStringsSep;
  };

  # nixpkgs' declaration of one nix.buildMachines entry
  # (nixos/modules/config/nix-remote-build.nix): what client.nix produces is
  # checked against it, as the real module system would.
  buildMachineOptions = with lib; {
    hostName = mkOption { type = types.str; };
    protocol = mkOption { type = types.enum [ null "ssh" "ssh-ng" ]; default = "ssh"; };
    system = mkOption { type = types.nullOr types.str; default = null; };
    systems = mkOption { type = types.listOf types.str; default = [ ]; };
    sshUser = mkOption { type = types.nullOr types.str; default = null; };
    sshKey = mkOption { type = types.nullOr types.str; default = null; };
    maxJobs = mkOption { type = types.int; default = 1; };
    speedFactor = mkOption { type = types.numbers.positive; default = 1; };
    mandatoryFeatures = mkOption { type = types.listOf types.str; default = [ ]; };
    supportedFeatures = mkOption { type = types.listOf types.str; default = [ ]; };
    publicHostKey = mkOption { type = types.nullOr types.str; default = null; };
  };

  # --- TOML, for the fake pkgs.formats.toml (tables, arrays of tables,
  # scalars and lists of scalars: what the relay config uses).
  toTOML = value:
    let
      key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else toJSON k;
      header = path: concatStringsSep "." (map key path);
      isTableArray = v: isList v && v != [ ] && all isAttrs v;
      scalar = v:
        if isString v || isInt v || isFloat v then toJSON v
        else if isBool v then (if v then "true" else "false")
        else if isList v then "[" + concatStringsSep ", " (map scalar v) + "]"
        else throw "toTOML: cannot render ${builtins.typeOf v}";
      render = path: set:
        let
          names = attrNames set;
          tables = filter (n: isAttrs set.${n}) names;
          arrays = filter (n: isTableArray set.${n}) names;
          simple = filter (n: !(builtins.elem n tables || builtins.elem n arrays)) names;
        in
        builtins.concatStringsSep "" (
          map (n: "${key n} = ${scalar set.${n}}\n") simple
          ++ map (n: "\n[${header (path ++ [ n ])}]\n" + render (path ++ [ n ]) set.${n}) tables
          ++ builtins.concatMap (n: map (t: "\n[[${header (path ++ [ n ])}]]\n" + render (path ++ [ n ]) t) set.${n}) arrays);
    in
    render [ ] value;

  fakeStorePath = name: seed:
    "${builtins.storeDir}/${substring 0 32 (builtins.hashString "sha256" seed)}-${name}";

  pkgs = {
    inherit lib;
    formats.toml = { }: {
      type = lib.types.mk "TOML value" isAttrs;
      generate = name: value:
        let text = toTOML value; in
        { inherit name text; outPath = fakeStorePath name text; };
    };
    callPackage = _fn: _args: { name = "nix-relay-0.1.0"; outPath = fakeStorePath "nix-relay-0.1.0" "pkg"; };
    writeText = name: text: { inherit name text; outPath = fakeStorePath name text; };
    stdenv.hostPlatform.system = "x86_64-linux";
    curl = { name = "curl"; outPath = fakeStorePath "curl" "curl"; };
    coreutils = { name = "coreutils"; outPath = fakeStorePath "coreutils" "coreutils"; };
    testers.runNixOSTest = test: test;
  };

  # --- options: defaults, type checks, unknown keys.
  isOption = v: isAttrs v && (v._type or null) == "option";
  fillSet = { path, freeform }: opts: val:
    let
      v = if isAttrs val then val else { };
      strict = !freeform && builtins.any (n: isOption opts.${n}) (attrNames opts);
      unknown = filter (n: !(opts ? ${n})) (attrNames v);
    in
    if strict && unknown != [ ]
    then throw "The option `${concatStringsSep "." (path ++ [ (builtins.head unknown) ])}' does not exist."
    else v // builtins.mapAttrs
      (n: o:
        let p = path ++ [ n ]; in
        if isOption o then fillOption p o (v ? ${n}) (v.${n} or null)
        else fillSet { path = p; inherit freeform; } o (v.${n} or { }))
      opts;
  fillOption = path: opt: has: val:
    let
      name = concatStringsSep "." path;
      value =
        if has then val
        else if opt ? default then opt.default
        else throw "The option `${name}' is used but not defined.";
      checked =
        if opt.type.check value then value
        else throw "A definition for option `${name}' is not of type `${opt.type.name}'.";
      sub = opt.type.module;
    in
    if opt.type ? module
    then fillSet { inherit path; freeform = sub ? freeformType; } (sub.options or { }) checked
    else checked;

  # --- config: resolve mkIf / mkMerge / mkOverride, merge definitions.
  absent = { _type = "absent"; };
  isAbsent = v: isAttrs v && (v._type or null) == "absent";
  isPlainSet = v: isAttrs v && !(v ? _type) && !(v ? outPath);
  resolve = v:
    if isAttrs v && (v._type or null) == "if" then (if v.condition then resolve v.content else absent)
    else if isAttrs v && (v._type or null) == "merge" then builtins.foldl' merge absent (map resolve v.contents)
    else if isAttrs v && (v._type or null) == "override" then resolve v.content
    else if isPlainSet v then lib.filterAttrs (_: x: !(isAbsent x)) (builtins.mapAttrs (_: resolve) v)
    else v;
  merge = a: b:
    if isAbsent a then b
    else if isAbsent b then a
    else if isPlainSet a && isPlainSet b then
      builtins.zipAttrsWith (_: vs: if builtins.length vs == 1 then builtins.head vs else merge (builtins.head vs) (builtins.elemAt vs 1)) [ a b ]
    else if isList a && isList b then a ++ b
    else if a == b then a
    else throw "conflicting definitions: ${toJSON a} and ${toJSON b}";

  # Evaluates `module` (a path or function) with `user` as the configuration
  # the rest of the system gives it. Returns the configuration it produces
  # (`out`, {} when nothing), the `config` it saw, and failed assertions.
  evalModule = module: user:
    let
      f = if isPath module then import module else module;
      m = f { inherit lib pkgs config; };
      config = fillSet { path = [ ]; freeform = false; } (m.options or { }) user;
      r = resolve (m.config or { });
      out = if isAbsent r then { } else r;
    in
    {
      inherit out config;
      failed = map (a: a.message) (filter (a: !a.assertion) (out.assertions or [ ]));
    };
in
{
  inherit lib pkgs evalModule toTOML;
  # One nix.buildMachines entry as nixpkgs would see it: defaults applied,
  # every value type-checked, unknown attributes refused.
  checkBuildMachine = i: m: fillSet { path = [ "nix" "buildMachines" "[${toString i}]" ]; freeform = false; } buildMachineOptions m;
}
