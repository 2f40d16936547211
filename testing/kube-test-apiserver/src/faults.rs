//! Fault injection and the request log.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Make the next `count` matching requests fail with `status` (and/or be delayed).
///
/// Over HTTP (`POST /_test/faults`) the JSON form is
/// `{"count":1,"status":503,"pathContains":"/secrets","method":"PATCH","delayMs":200}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultSpec {
    /// How many matching requests are affected.
    pub count: usize,
    /// HTTP status to answer with (`0` = do not fail, only delay).
    pub status: u16,
    /// Only requests whose path+query contains this string.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Only requests with this method (case-insensitive).
    #[serde(default)]
    pub method: Option<String>,
    /// Delay the request by this much before failing it / serving it.
    #[serde(default, rename = "delayMs", with = "millis")]
    pub delay: Option<Duration>,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// One served request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub method: String,
    /// Path and query, e.g. `/api/v1/namespaces/default/secrets?limit=500`.
    pub path: String,
    pub content_type: Option<String>,
    /// Response status (200 for watches, whose stream may end later).
    pub status: u16,
}

/// What a matching fault does to a request.
pub(crate) struct Injected {
    pub status: u16,
    pub delay: Option<Duration>,
}

const LOG_CAP: usize = 20_000;

/// Fault injection handle; see [`crate::TestApiServer::faults`].
pub struct Faults {
    pending: Mutex<Vec<FaultSpec>>,
    log: Mutex<Vec<RequestRecord>>,
    drop_tx: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            pending: Mutex::default(),
            log: Mutex::default(),
            drop_tx: watch::channel(0).0,
        }
    }
}

impl Faults {
    /// Queue a fault for the next `spec.count` matching requests.
    pub fn fail_next(&self, spec: FaultSpec) {
        if spec.count > 0 {
            self.pending.lock().expect("faults lock").push(spec);
        }
    }

    /// End every open watch stream abruptly (the connection is reset mid-stream).
    pub fn drop_watches(&self) {
        self.drop_tx.send_modify(|g| *g += 1);
    }

    /// Every request served so far (oldest first; `/_test/*` requests excluded).
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.log.lock().expect("log lock").clone()
    }

    /// Forget queued faults and the request log.
    pub fn clear(&self) {
        self.pending.lock().expect("faults lock").clear();
        self.log.lock().expect("log lock").clear();
    }

    pub(crate) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.drop_tx.subscribe()
    }

    pub(crate) fn take(&self, method: &str, path: &str) -> Option<Injected> {
        let mut pending = self.pending.lock().expect("faults lock");
        let idx = pending.iter().position(|f| {
            f.path_contains.as_deref().is_none_or(|p| path.contains(p))
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        let f = &mut pending[idx];
        let injected = Injected {
            status: f.status,
            delay: f.delay,
        };
        f.count -= 1;
        if f.count == 0 {
            pending.remove(idx);
        }
        Some(injected)
    }

    pub(crate) fn record(&self, rec: RequestRecord) {
        let mut log = self.log.lock().expect("log lock");
        if log.len() >= LOG_CAP {
            log.drain(..LOG_CAP / 2);
        }
        log.push(rec);
    }
}
