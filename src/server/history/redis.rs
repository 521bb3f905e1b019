//! History in Redis: a stream per room, ids and the epoch in a meta hash.
//!
//! Storing a message is one round trip: a script gives it the room's next
//! id (creating the epoch if the room has none, as after Redis lost its
//! data), appends it to the stream (trimmed to about `--history`), and
//! publishes it on the room's channel, all at once. The message reaches
//! every node, this one included, through pub/sub ([`RedisFanout`]).
//!
//! [`RedisFanout`]: crate::server::fanout::RedisFanout

use std::sync::Arc;

use redis::streams::StreamRangeReply;

use super::{Appended, BoxFuture, History, HistoryError, NewMessage, Page, Since, Stamp, Stored};
use crate::protocol::now_ms;
use crate::server::fanout::parse_entry;
use crate::server::redis::{Body, RedisLink, origin_field};

/// The room's epoch, or the chat's for a room that has none yet (the
/// chat's made if there is none either): one epoch for every room, as in
/// the other backends, until Redis loses its data. Sets `epoch` and
/// `fresh` (the room has no epoch of its own yet). KEYS: meta, log, the
/// chat's epoch. ARGV: channel or unused, new epoch.
const EPOCH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local fresh = not epoch
if fresh then
  epoch = redis.call('GET', KEYS[3])
  if not epoch then
    epoch = ARGV[2]
    redis.call('SET', KEYS[3], epoch)
  end
end
";

/// An append gives the room the epoch its ids now belong to.
const KEEP_EPOCH: &str = r"
if fresh then
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
";

/// A read tells the epoch and writes nothing for the room: reading one
/// leaves no key behind, and its first message takes the same epoch.
const TELL_EPOCH: &str = "return epoch";

/// KEYS: meta, log, the chat's epoch, cids. ARGV: channel, new epoch, max
/// length, origin, body, sender and cid (`nick\ncid`, or empty without a
/// cid). A retry (a sender and cid the room holds) stores and publishes
/// nothing and answers the original's id; the cids are kept as long as the
/// log keeps their messages.
const APPEND: &str = r"
if ARGV[6] ~= '' then
  local original = redis.call('ZSCORE', KEYS[4], ARGV[6])
  if original then
    return {tonumber(original), epoch, 1}
  end
end
local id = redis.call('HINCRBY', KEYS[1], 'last', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id .. '-0', 'o', ARGV[4], 'b', ARGV[5])
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[4], id, ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', id - tonumber(ARGV[3]))
end
redis.call('PUBLISH', ARGV[1], 'm ' .. id .. ' ' .. epoch .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
return {id, epoch, 0}
";

/// Messages kept in Redis streams, shared by every node.
#[derive(Debug)]
pub struct RedisHistory {
    link: Arc<RedisLink>,
    /// The append script: [`EPOCH`], [`KEEP_EPOCH`], then [`APPEND`].
    append: String,
    /// The read's epoch script: [`EPOCH`], then [`TELL_EPOCH`].
    read_epoch: String,

    /// Messages kept per room (approximately: streams are trimmed in whole nodes).
    keep: usize,
}

impl RedisHistory {
    /// History in the Redis behind `link`, about `keep` messages per room.
    pub fn new(link: Arc<RedisLink>, keep: usize) -> Self {
        Self {
            link,
            append: format!("{EPOCH}{KEEP_EPOCH}{APPEND}"),
            read_epoch: format!("{EPOCH}{TELL_EPOCH}"),
            keep: keep.max(1),
        }
    }

    fn unavailable(err: &redis::RedisError) -> HistoryError {
        HistoryError::Unavailable(format!("Redis: {err}"))
    }

    async fn append_now(&self, message: NewMessage) -> Result<Appended, HistoryError> {
        let ts = now_ms();
        // Nicks are unique without case, so a sender is its lower-case nick.
        let sender = message
            .cid
            .as_ref()
            .map(|cid| format!("{}\n{cid}", message.from.to_ascii_lowercase()))
            .unwrap_or_default();
        let body = Body {
            from: message.from.to_string(),
            text: message.text,
            ts,
            cid: message.cid,
        };
        let body =
            serde_json::to_string(&body).map_err(|e| HistoryError::Unavailable(e.to_string()))?;
        let room = &message.room;
        let mut conn = self.link.conn();
        let started = std::time::Instant::now();
        // EVAL, not EVALSHA: a script Redis does not know yet (after a
        // restart) would be retried after the sender's later messages, out
        // of order. Redis caches the compiled script either way.
        let (id, _epoch, repeat): (u64, String, u8) = self
            .link
            .note(
                redis::cmd("EVAL")
                    .arg(&self.append)
                    .arg(4)
                    .arg(self.link.meta(room))
                    .arg(self.link.log(room))
                    .arg(self.link.epoch())
                    .arg(self.link.cids(room))
                    .arg(self.link.channel(room))
                    .arg(ts)
                    .arg(self.keep)
                    .arg(origin_field(message.origin))
                    .arg(body)
                    .arg(sender)
                    .query_async(&mut conn)
                    .await,
            )
            .map_err(|err| Self::unavailable(&err))?;
        self.link
            .metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        if repeat == 0 {
            return Ok(Appended::New(Stamp { id, ts }));
        }
        let original = self.read_now(room, Since::After(id - 1), 1).await?;
        match original.messages.into_iter().next() {
            Some(original) if original.id == id => Ok(Appended::Repeat(original)),
            _ => Err(HistoryError::Unavailable(format!(
                "message {id}, of which this is a retry, is no longer kept"
            ))),
        }
    }

    async fn read_now(&self, room: &str, since: Since, limit: usize) -> Result<Page, HistoryError> {
        let (meta, log) = (self.link.meta(room), self.link.log(room));
        let count = limit.max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("EVAL")
            .arg(&self.read_epoch)
            .arg(3)
            .arg(&meta)
            .arg(&log)
            .arg(self.link.epoch())
            .arg("")
            .arg(now_ms());
        let newest_first = match since {
            Since::Recent => {
                pipe.xrevrange_count(&log, "+", "-", count);
                true
            }
            Since::After(after) => {
                pipe.xrange_count(&log, format!("{}-0", after.saturating_add(1)), "+", count);
                false
            }
            Since::Before(before) if before <= 1 => {
                pipe.xrange_count(&log, "1-0", "0-1", 1);
                false
            }
            Since::Before(before) => {
                pipe.xrevrange_count(&log, format!("{}-0", before - 1), "-", count);
                true
            }
        };
        let mut conn = self.link.conn();
        let (epoch, reply): (u64, StreamRangeReply) = self
            .link
            .note(pipe.query_async(&mut conn).await)
            .map_err(|err| Self::unavailable(&err))?;
        let mut messages: Vec<Stored> = reply
            .ids
            .iter()
            .filter_map(parse_entry)
            .map(|(id, origin, body)| Stored {
                id,
                ts: body.ts,
                from: body.from,
                text: body.text,
                cid: body.cid,
                origin: Some(origin),
            })
            .take(limit)
            .collect();
        if newest_first {
            messages.reverse();
        }
        Ok(Page {
            epoch,
            messages,
            newest: None,
        })
    }
}

impl History for RedisHistory {
    fn append(&self, message: NewMessage) -> BoxFuture<'_, Result<Appended, HistoryError>> {
        Box::pin(self.append_now(message))
    }

    fn read(
        &self,
        room: &str,
        since: Since,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, HistoryError>> {
        let room = room.to_owned();
        Box::pin(async move { self.read_now(&room, since, limit).await })
    }

    fn trouble(&self) -> Option<String> {
        self.link.trouble()
    }
}
