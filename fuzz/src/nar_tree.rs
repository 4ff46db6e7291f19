//! Decodes a NAR that the tokenizer has accepted into a [`NarNode`] tree,
//! so the fuzzers can check it re-encodes to the same bytes. Panics on
//! malformed input: it only ever sees validated NARs.

use nix_relay_wire::nar::NarNode;

struct Tokens<'a>(&'a [u8]);

impl<'a> Tokens<'a> {
    fn next(&mut self) -> &'a [u8] {
        let (len, rest) = self.0.split_at(8);
        let len = usize::try_from(u64::from_le_bytes(len.try_into().expect("8 bytes")))
            .expect("validated length");
        let (tok, rest) = rest.split_at(len);
        self.0 = &rest[(8 - len % 8) % 8..];
        tok
    }

    fn expect(&mut self, want: &[u8]) {
        assert_eq!(self.next(), want, "validated NAR");
    }

    fn node(&mut self) -> NarNode {
        self.expect(b"(");
        self.expect(b"type");
        let node = match self.next() {
            b"regular" => self.regular(),
            b"symlink" => {
                self.expect(b"target");
                NarNode::Symlink {
                    target: self.next().to_vec(),
                }
            }
            b"directory" => self.directory(),
            other => panic!("validated NAR has type {other:?}"),
        };
        if !matches!(node, NarNode::Directory(_)) {
            self.expect(b")");
        }
        node
    }

    fn regular(&mut self) -> NarNode {
        let mut tag = self.next();
        let executable = tag == b"executable";
        if executable {
            self.expect(b"");
            tag = self.next();
        }
        assert_eq!(tag, b"contents", "validated NAR");
        NarNode::Regular {
            executable,
            contents: self.next().to_vec(),
        }
    }

    /// Reads entries through the directory's closing `)`.
    fn directory(&mut self) -> NarNode {
        let mut entries = Vec::new();
        loop {
            match self.next() {
                b")" => return NarNode::Directory(entries),
                b"entry" => {
                    self.expect(b"(");
                    self.expect(b"name");
                    let name = self.next().to_vec();
                    self.expect(b"node");
                    entries.push((name, self.node()));
                    self.expect(b")");
                }
                other => panic!("validated NAR has {other:?} in a directory"),
            }
        }
    }
}

/// The tree of a NAR the tokenizer accepted (exactly its bytes).
pub fn decode(nar: &[u8]) -> NarNode {
    let mut t = Tokens(nar);
    t.expect(b"nix-archive-1");
    let node = t.node();
    assert!(t.0.is_empty(), "the NAR ends after its root node");
    node
}
