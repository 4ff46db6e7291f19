#!/usr/bin/env python3
"""Import cycles between the crate's modules (guard rail, tests/guard.sh).

Nodes are the top-level modules of src/ and the submodules of session/;
an edge is a `crate::X` path (or `super::X` inside session/) outside
comments and test code. `testing` (compiled only with the feature, the
fake builder's injection point) is left out. Prints the mutual pairs and
the cycles (strongly connected components); exits 1 if there is any.
`-v` also prints every edge."""
import re, os, sys, itertools
args = [a for a in sys.argv[1:] if not a.startswith('-')]
root = args[0] if args else 'src'
def modname(path):
    rel = os.path.relpath(path, root)[:-3]
    parts = rel.split('/')
    if parts[-1] in ('mod', 'lib', 'main'): parts = parts[:-1]
    parts = [p for p in parts if not p.endswith('_tests') and p != 'tests']
    return parts
edges = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs') or f.endswith('_tests.rs') or f.startswith('tests') : continue
        p = os.path.join(dp, f); m = modname(p)
        if not m or m[0] == 'testing': continue
        src = open(p).read()
        src = re.sub(r'//[^\n]*', '', src)
        src = re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', src, flags=re.S)
        refs = re.findall(r'crate::([a-z_0-9]+)(?:::([a-z_0-9]+))?', src)
        if m[0] == 'session' and len(m) == 2:
            refs += [('session', x) for x in re.findall(r'super::([a-z_]+)', src)]
        for t in refs:
            a = m[0] if m[0] != 'session' or len(m) == 1 else 'session::' + m[1]
            b = t[0]
            if b == 'testing': continue
            if b == 'session' and t[1] and t[1][0].islower(): b = 'session::' + t[1]
            if a.split('::')[0] == b.split('::')[0] and (a == b or '::' not in a or '::' not in b): continue
            edges.setdefault(a, set()).add(b)
# strongly connected components
idx = {}; low = {}; st = []; on = set(); comps = []; c = [0]
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: comps.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in list(edges): 
    if v not in idx: sc(v)
pairs = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})
print('mutual pairs:', len(pairs)); [print('  ', a, '<->', b) for a, b in pairs]
print('cycles (SCCs):', len(comps)); [print('  ', ' '.join(x)) for x in comps]
if '-v' in sys.argv:
    for a in sorted(edges): print(a, '->', ' '.join(sorted(edges[a])))
sys.exit(1 if comps else 0)
