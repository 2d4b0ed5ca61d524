//! [`GreetServiceImpl`]: the greeting logic and its statistics, without
//! fault injection.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::{HelloRequest, HelloResponse, StatsRequest, StatsResponse};

/// The greeting used when a request names none.
pub const DEFAULT_GREETING: &str = "Hello";

#[derive(Debug, Default)]
struct Stats {
    total_greets: i64,
    greets_by_name: HashMap<String, i64>,
    last_greet_time: i64,
}

/// Greets and counts greetings: total, per name, time of the last one.
#[derive(Debug)]
pub struct GreetServiceImpl {
    server_id: String,
    stats: Mutex<Stats>,
}

impl GreetServiceImpl {
    /// A service that signs its greetings with `server_id`.
    pub fn new(server_id: impl Into<String>) -> Self {
        Self {
            server_id: server_id.into(),
            stats: Mutex::default(),
        }
    }

    /// Greets `request.name` and counts the greeting.
    ///
    /// The message is `"{greeting}, {name}! (from {server id})"`, with
    /// [`DEFAULT_GREETING`] when the request has none.
    pub fn say_hello(&self, request: &HelloRequest) -> HelloResponse {
        let now = unix_now();
        {
            let mut stats = self.lock();
            stats.total_greets += 1;
            *stats
                .greets_by_name
                .entry(request.name.clone())
                .or_default() += 1;
            stats.last_greet_time = now;
        }
        let greeting = match request.greeting.trim() {
            "" => DEFAULT_GREETING,
            g => g,
        };
        HelloResponse {
            message: format!("{greeting}, {}! (from {})", request.name, self.server_id),
            greet_time: now,
        }
    }

    /// The statistics. With a name, `greets_by_name` holds only that name
    /// (if it was greeted); the total and the last time are always the
    /// server's.
    pub fn stats(&self, request: &StatsRequest) -> StatsResponse {
        let stats = self.lock();
        let greets_by_name = if request.name.is_empty() {
            stats.greets_by_name.clone()
        } else {
            stats
                .greets_by_name
                .get_key_value(&request.name)
                .map(|(k, v)| (k.clone(), *v))
                .into_iter()
                .collect()
        };
        StatsResponse {
            total_greets: stats.total_greets,
            greets_by_name,
            last_greet_time: stats.last_greet_time,
        }
    }

    /// The number of greetings so far.
    pub fn total_greets(&self) -> i64 {
        self.lock().total_greets
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        // Counters stay consistent even if a holder panicked.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, greeting: &str) -> HelloRequest {
        HelloRequest {
            name: name.into(),
            greeting: greeting.into(),
        }
    }

    #[test]
    fn greets_and_counts() {
        let s = GreetServiceImpl::new("server-A");
        let r = s.say_hello(&hello("Ann", ""));
        assert_eq!(r.message, "Hello, Ann! (from server-A)");
        assert!(r.greet_time > 0);
        assert_eq!(
            s.say_hello(&hello("Ann", "Hi")).message,
            "Hi, Ann! (from server-A)"
        );
        s.say_hello(&hello("Bob", "Hey"));

        let all = s.stats(&StatsRequest::default());
        assert_eq!(all.total_greets, 3);
        assert_eq!(all.greets_by_name.len(), 2);
        assert_eq!(all.greets_by_name["Ann"], 2);
        assert!(all.last_greet_time >= r.greet_time);

        let bob = s.stats(&StatsRequest { name: "Bob".into() });
        assert_eq!(bob.total_greets, 3);
        assert_eq!(bob.greets_by_name, HashMap::from([("Bob".into(), 1)]));
        let nobody = s.stats(&StatsRequest { name: "Zed".into() });
        assert!(nobody.greets_by_name.is_empty());
    }
}
