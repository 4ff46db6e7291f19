//! A NAR of one regular file (how `.drv` files and flat content-addressed
//! paths are stored) read back as the file's contents.

use super::{NarLimits, NarParser};
use crate::Error;

/// The contents of the single regular file `nar` holds; an error for a
/// NAR that is invalid, incomplete, followed by more bytes, or a
/// directory or symlink.
pub fn file_contents(nar: &[u8], limits: NarLimits) -> Result<Vec<u8>, Error> {
    let mut parser = NarParser::new(limits);
    let used = parser.feed(nar)?;
    parser.finish()?;
    let not_flat = |reason: &str| Error::BadNar {
        offset: 0,
        reason: reason.to_owned(),
    };
    if used != nar.len() {
        return Err(not_flat("bytes after the NAR"));
    }
    // The parser checked the framing; what is left is its shape.
    let mut tokens = Tokens { s: nar, at: 0 };
    let head = [tokens.next(), tokens.next(), tokens.next(), tokens.next()];
    if head[1..] != [&b"("[..], b"type", b"regular"] {
        return Err(not_flat("not a single regular file"));
    }
    let mut t = tokens.next();
    if t == b"executable" {
        tokens.next();
        t = tokens.next();
    }
    if t != b"contents" {
        return Err(not_flat("regular file without contents"));
    }
    Ok(tokens.next().to_vec())
}

/// Walks the padded strings of a NAR the parser already validated.
struct Tokens<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Tokens<'a> {
    fn next(&mut self) -> &'a [u8] {
        let Some(len) = self.s.get(self.at..self.at + 8) else {
            return b"";
        };
        let len = u64::from_le_bytes(len.try_into().unwrap_or([0; 8])) as usize;
        let start = self.at + 8;
        let end = (start + len).min(self.s.len());
        self.at = start + len.div_ceil(8) * 8;
        &self.s[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NarNode, encode_nar};
    use super::*;

    #[test]
    fn a_file_nar_gives_back_its_contents() {
        for executable in [false, true] {
            let contents = b"Derive([],[],[],\"x\",\"y\",[],[])".to_vec();
            let nar = encode_nar(&NarNode::Regular {
                executable,
                contents: contents.clone(),
            });
            assert_eq!(file_contents(&nar, NarLimits::default()).unwrap(), contents);
        }
    }

    #[test]
    fn directories_symlinks_and_broken_nars_are_refused() {
        let dir = encode_nar(&NarNode::Directory(vec![]));
        assert!(file_contents(&dir, NarLimits::default()).is_err());
        let link = encode_nar(&NarNode::Symlink {
            target: b"x".to_vec(),
        });
        assert!(file_contents(&link, NarLimits::default()).is_err());
        let file = encode_nar(&NarNode::Regular {
            executable: false,
            contents: b"abc".to_vec(),
        });
        assert!(file_contents(&file[..file.len() - 8], NarLimits::default()).is_err());
        let mut more = file.clone();
        more.extend_from_slice(&[0; 8]);
        assert!(file_contents(&more, NarLimits::default()).is_err());
    }
}
