//! The bucket's listings: incomplete multipart uploads and keys, page by
//! page, at most [`MAX_PAGES`] pages.

use bytes::Bytes;

use super::client::{Upload, q, xml_of};
use super::{Bucket, Error};

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
        let op = "ListObjectsV2";
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![q("list-type", "2"), q("prefix", prefix)];
            if let Some(t) = &token {
                query.push(q("continuation-token", t.clone()));
            }
            let resp = self.list_call(op, &query).await?;
            let root = xml_of(op, prefix, &resp)?;
            let keys = root
                .children_named("Contents")
                .filter_map(|c| c.text_at(&["Key"]));
            out.extend(keys.map(str::to_owned));
            let next = root.text_at(&["NextContinuationToken"]).map(str::to_owned);
            match (root.text_at(&["IsTruncated"]), next) {
                (Some("true"), Some(t)) if token.as_ref() != Some(&t) => token = Some(t),
                _ => return Ok(out),
            }
        }
        Ok(out)
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
