//! The bucket's listings: incomplete multipart uploads and objects, page
//! by page, at most [`MAX_PAGES`] pages.

use bytes::Bytes;

use super::client::{Upload, q, xml_of};
use super::{Bucket, Error};

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    /// None if the server's date did not parse (treated as "now": never
    /// old enough to delete).
    pub modified: Option<std::time::SystemTime>,
    /// As listed (quoted); "" if none.
    pub etag: String,
}

/// Pages read per listing (1000 entries each: 10 million entries).
pub const MAX_PAGES: usize = 10_000;

impl Bucket {
    /// ListMultipartUploads: every incomplete upload in the bucket.
    pub async fn list_uploads(&self) -> Result<Vec<Upload>, Error> {
        let op = "ListMultipartUploads";
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![q("uploads", "")];
            if let Some((k, u)) = &marker {
                query.push(q("key-marker", k.clone()));
                query.push(q("upload-id-marker", u.clone()));
            }
            let resp = self.list_call(op, &query).await?;
            let root = xml_of(op, "", &resp)?;
            for u in root.children_named("Upload") {
                let (Some(key), Some(id)) = (u.text_at(&["Key"]), u.text_at(&["UploadId"])) else {
                    continue;
                };
                out.push(Upload {
                    key: key.to_owned(),
                    id: id.to_owned(),
                    initiated: (u.text_at(&["Initiated"]))
                        .and_then(crate::aws::time::parse_iso8601),
                });
            }
            let next = (root.text_at(&["NextKeyMarker"]))
                .zip(root.text_at(&["NextUploadIdMarker"]))
                .map(|(k, u)| (k.to_owned(), u.to_owned()));
            match (root.text_at(&["IsTruncated"]), next) {
                (Some("true"), Some(n)) if marker.as_ref() != Some(&n) => marker = Some(n),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// ListObjectsV2: every key under `prefix`.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let objects = self.list_objects(prefix).await?;
        Ok(objects.into_iter().map(|o| o.key).collect())
    }

    /// ListObjectsV2: every object under `prefix`, with its size and time.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<Object>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let (page, next) = self.list_page(prefix, token.as_deref(), None).await?;
            out.extend(page);
            match next {
                None => return Ok(out),
                Some(t) if token.as_ref() != Some(&t) => token = Some(t),
                // A cut listing is never taken for the whole bucket (an
                // eviction pass would count unlisted narinfos' NARs as orphans).
                Some(_) => break,
            }
        }
        Err(Error::Reply {
            op: "ListObjectsV2",
            key: prefix.to_owned(),
            what: "an end within MAX_PAGES pages (or a new continuation token)",
        })
    }

    /// The object at exactly `key` (size, last modified), if there is one:
    /// a one-key listing (its time parses as the listings' do).
    pub async fn stat(&self, key: &str) -> Result<Option<Object>, Error> {
        let (page, _) = self.list_page(key, None, Some(1)).await?;
        Ok(page.into_iter().find(|o| o.key == key))
    }

    /// One page of ListObjectsV2 and the token of the next, if any.
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<(Vec<Object>, Option<String>), Error> {
        let op = "ListObjectsV2";
        let mut query = vec![q("list-type", "2"), q("prefix", prefix)];
        if let Some(t) = token {
            query.push(q("continuation-token", t));
        }
        if let Some(n) = max_keys {
            query.push(q("max-keys", n.to_string()));
        }
        let resp = self.list_call(op, &query).await?;
        let root = xml_of(op, prefix, &resp)?;
        let page = (root.children_named("Contents"))
            .filter_map(|c| {
                Some(Object {
                    key: c.text_at(&["Key"])?.to_owned(),
                    size: c.text_at(&["Size"]).and_then(|s| s.parse().ok())?,
                    modified: (c.text_at(&["LastModified"]))
                        .and_then(crate::aws::time::parse_iso8601),
                    etag: c.text_at(&["ETag"]).unwrap_or("").to_owned(),
                })
            })
            .collect();
        let next = match root.text_at(&["IsTruncated"]) {
            Some("true") => root.text_at(&["NextContinuationToken"]).map(str::to_owned),
            _ => None,
        };
        Ok((page, next))
    }

    async fn list_call(
        &self,
        op: &'static str,
        query: &[(String, String)],
    ) -> Result<crate::aws::Response, Error> {
        let resp = self.call_any(op, ("GET", ""), query, Bytes::new()).await?;
        if resp.status != 200 {
            return Err(super::client::status_err(op, "", &resp));
        }
        Ok(resp)
    }
}
