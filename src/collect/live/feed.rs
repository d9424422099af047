//! The reading side of `collect live`: the connection (its handshake signed), the subscriptions, seq checks,
//! reconnects and the heartbeat; every data message of a selected market goes to the writer with its receive
//! time.

use std::collections::{BTreeSet, HashMap};
use std::pin::pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};

use super::{
    options::{MAX_BACKOFF, Options, Selection},
    recorder::Received,
    report::{Health, Report},
};
use crate::{
    collect::auth::ApiKey,
    error::Error,
    import::kalshi::{self, Record},
};

/// What the reading side works with: the options, the selection, the writer's queue, the health to report.
pub(super) struct Feed<'a> {
    pub(super) options: &'a Options,
    pub(super) selection: &'a Selection,
    pub(super) sender: mpsc::Sender<Received>,
    pub(super) health: &'a Health,
}

/// How a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

/// The reading side: connections, subscriptions, seq checks, the selection; sends data messages to the writer.
pub(super) async fn read(
    key: Option<&ApiKey>,
    feed: Feed<'_>,
    markets: BTreeSet<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, Error> {
    let (options, health) = (feed.options, feed.health);
    let mut report = Report::default();
    let mut shutdown = pin!(shutdown);
    let mut state = Session { markets, ..Session::default() };
    let mut pause = options.backoff;
    loop {
        let connected = tokio::select! {
            () = &mut shutdown => return Ok(report),
            connected = connect(key, &options.ws_url) => connected,
        };
        let end = match connected {
            Ok(socket) => {
                report.connections += 1;
                let opened = Instant::now();
                let end = state.run(socket, &feed, &mut shutdown, &mut report).await?;
                health.connected(false).await;
                if opened.elapsed() > MAX_BACKOFF {
                    pause = options.backoff;
                }
                end
            }
            Err(Refused::Retry(reason)) => End::Lost(reason),
            // a wrong key stays wrong: no point in knocking again
            Err(Refused::Key(reason)) => return Err(Error::Kalshi { url: options.ws_url.clone(), reason }),
        };
        match end {
            End::Shutdown => return Ok(report),
            End::Lost(reason) => {
                report.disconnects += 1;
                tracing::warn!(%reason, pause_ms = pause.as_millis() as u64, "collect live: connection lost, reconnecting");
            }
        }
        tokio::select! {
            () = &mut shutdown => return Ok(report),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a connection could not be opened.
enum Refused {
    /// The network or the server: try again.
    Retry(String),
    /// The URL or the key (401, 403): trying again cannot help.
    Key(String),
}

/// Opens a connection, its handshake signed with `key` when there is one.
async fn connect(key: Option<&ApiKey>, url: &str) -> Result<Socket, Refused> {
    let mut request = url.into_client_request().map_err(|e| Refused::Key(format!("not a WebSocket URL: {e}")))?;
    if let Some(key) = key {
        let path = request.uri().path().to_owned();
        for (name, value) in key.headers(Utc::now().timestamp_millis(), "GET", &path) {
            let value = HeaderValue::from_str(&value).map_err(|e| Refused::Key(e.to_string()))?;
            request.headers_mut().insert(name, value);
        }
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let reason = format!("the handshake was refused: {} {}", response.status(), body.trim());
            match response.status().as_u16() {
                401 | 403 => Err(Refused::Key(format!("{reason} (check --api-key-id and --private-key-file)"))),
                _ => Err(Refused::Retry(format!("{url}: {reason}"))),
            }
        }
        Err(e) => Err(Refused::Retry(format!("{url}: {}", crate::error::error_chain(&e)))),
    }
}

/// The subscriptions of the connection under way, and what outlives a connection.
#[derive(Debug, Default)]
struct Session {
    /// The markets whose books are subscribed (the selection's open markets and those opened since).
    markets: BTreeSet<String>,
    /// The next command id.
    next_id: u64,
    /// Commands waiting for their `subscribed`: id -> channel.
    pending: HashMap<u64, String>,
    /// The order-book subscription's sid, once subscribed.
    book_sid: Option<u64>,
    /// The last seq seen per sid of an order-book subscription.
    last_seq: HashMap<u64, i64>,
    /// The last receive time given, so that they increase strictly.
    last_received: Option<DateTime<Utc>>,
}

impl Session {
    /// Subscribes, then reads until the connection is lost or `shutdown` completes.
    async fn run(
        &mut self,
        mut socket: Socket,
        feed: &Feed<'_>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
        report: &mut Report,
    ) -> Result<End, Error> {
        let (options, selection, sender, health) = (feed.options, feed.selection, &feed.sender, feed.health);
        self.pending.clear();
        self.book_sid = None;
        self.last_seq.clear();
        for command in self.subscriptions(options, selection) {
            if let Err(e) = socket.send(command).await {
                return Ok(End::Lost(format!("subscribing: {e}")));
            }
        }
        loop {
            let frame = tokio::select! {
                () = shutdown.as_mut() => {
                    // a polite close; what was received is committed by the writer
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    return Ok(End::Shutdown);
                }
                frame = tokio::time::timeout(options.heartbeat_timeout, socket.next()) => frame,
            };
            let text = match frame {
                Err(_) => {
                    let silent = humantime::format_duration(options.heartbeat_timeout);
                    return Ok(End::Lost(format!("nothing received for {silent}, not even a ping")));
                }
                Ok(None) => return Ok(End::Lost("the connection ended".into())),
                Ok(Some(Err(e))) => return Ok(End::Lost(crate::error::error_chain(&e))),
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Ok(End::Lost(format!("closed by Kalshi: {frame:?}")));
                }
                // pings are answered by the socket itself; pongs and binary frames carry no data
                Ok(Some(Ok(_))) => continue,
            };
            let received = self.receive_time();
            let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                tracing::warn!(message = %text.as_str(), "collect live: a message that is not JSON, skipped");
                continue;
            };
            if value.get("type").and_then(Value::as_str) == Some("subscribed") {
                health.connected(true).await;
            }
            let commands = self.control(&value, options, selection, report);
            for command in commands {
                if let Err(e) = socket.send(command).await {
                    return Ok(End::Lost(format!("sending a command: {e}")));
                }
            }
            let Some(ticker) = value.pointer("/msg/market_ticker").and_then(Value::as_str) else { continue };
            if !selection.contains(ticker) {
                report.other_markets += 1;
                continue;
            }
            let line = format!(
                r#"{{"received_at":"{}","message":{}}}"#,
                received.to_rfc3339_opts(SecondsFormat::Micros, true),
                text.as_str()
            );
            let records = match kalshi::parse_line(&line) {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(error = %e, message = %text.as_str(), "collect live: a message that does not convert, skipped");
                    continue;
                }
            };
            if records.iter().all(|r| matches!(r, Record::Ignored(_))) {
                continue;
            }
            report.messages += 1;
            if sender.send(Received { line, records }).await.is_err() {
                // the writer stopped on an error, which `run` reports
                return Ok(End::Shutdown);
            }
        }
    }

    /// A receive time: now, but after the previous one.
    fn receive_time(&mut self) -> DateTime<Utc> {
        let now = Utc::now();
        let time = match self.last_received {
            Some(last) if now <= last => last + TimeDelta::microseconds(1),
            _ => now,
        };
        self.last_received = Some(time);
        time
    }

    fn command(&mut self, cmd: &str, params: Value) -> (u64, Message) {
        self.next_id += 1;
        let id = self.next_id;
        (id, Message::text(json!({ "id": id, "cmd": cmd, "params": params }).to_string()))
    }

    fn subscribe(&mut self, channel: &str, tickers: Option<Vec<String>>) -> Message {
        let params = match tickers {
            Some(tickers) => json!({ "channels": [channel], "market_tickers": tickers }),
            None => json!({ "channels": [channel] }),
        };
        let (id, message) = self.command("subscribe", params);
        self.pending.insert(id, channel.to_owned());
        message
    }

    /// The subscribe commands of a new connection.
    fn subscriptions(&mut self, options: &Options, selection: &Selection) -> Vec<Message> {
        let mut out = Vec::new();
        let named: Vec<String> = selection.markets.iter().cloned().collect();
        if options.channels.trades {
            // named markets only: just theirs; series or events: all trades, those of other markets skipped
            out.push(self.subscribe("trade", selection.markets_only().then_some(named)));
        }
        if options.channels.books && !self.markets.is_empty() {
            let markets = self.markets.iter().cloned().collect();
            out.push(self.subscribe("orderbook_delta", Some(markets)));
        }
        if options.channels.lifecycle {
            out.push(self.subscribe("market_lifecycle_v2", None));
        }
        out
    }

    /// Follows the subscriptions: `subscribed`, errors, seq breaks, markets that open. The commands to send.
    fn control(
        &mut self,
        value: &Value,
        options: &Options,
        selection: &Selection,
        report: &mut Report,
    ) -> Vec<Message> {
        let kind = value.get("type").and_then(Value::as_str).unwrap_or_default();
        let sid =
            value.get("sid").and_then(Value::as_u64).or_else(|| value.pointer("/msg/sid").and_then(Value::as_u64));
        match kind {
            "subscribed" => {
                let id = value.get("id").and_then(Value::as_u64).unwrap_or_default();
                if let (Some(channel), Some(sid)) = (self.pending.remove(&id), sid)
                    && channel == "orderbook_delta"
                {
                    self.book_sid = Some(sid);
                }
                Vec::new()
            }
            "error" => {
                tracing::warn!(message = %value, "collect live: Kalshi refused a command");
                Vec::new()
            }
            "orderbook_snapshot" | "orderbook_delta" => {
                let (Some(sid), Some(seq)) = (sid, value.get("seq").and_then(Value::as_i64)) else { return Vec::new() };
                let last = self.last_seq.insert(sid, seq);
                match last {
                    Some(last) if seq != last + 1 && self.book_sid == Some(sid) => {
                        report.gaps += 1;
                        tracing::warn!(
                            sid,
                            expected = last + 1,
                            got = seq,
                            "collect live: seq gap, subscribing the books again"
                        );
                        self.resubscribe_books(sid)
                    }
                    _ => Vec::new(),
                }
            }
            "market_lifecycle_v2" => {
                let ticker = value.pointer("/msg/market_ticker").and_then(Value::as_str).unwrap_or_default();
                let event = value.pointer("/msg/event_type").and_then(Value::as_str).unwrap_or_default();
                let opens = matches!(event, "created" | "activated");
                if !opens || !selection.contains(ticker) || self.markets.contains(ticker) {
                    return Vec::new();
                }
                self.markets.insert(ticker.to_owned());
                match self.book_sid {
                    Some(sid) if options.channels.books => {
                        let params = json!({ "sids": [sid], "market_tickers": [ticker], "action": "add_markets" });
                        vec![self.command("update_subscription", params).1]
                    }
                    None if options.channels.books && !self.pending.values().any(|c| c == "orderbook_delta") => {
                        vec![self.subscribe("orderbook_delta", Some(vec![ticker.to_owned()]))]
                    }
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    /// A new book subscription for every market of `sid`, whose seq broke: its snapshots start a sound book.
    fn resubscribe_books(&mut self, sid: u64) -> Vec<Message> {
        self.book_sid = None;
        let (_, unsubscribe) = self.command("unsubscribe", json!({ "sids": [sid] }));
        let markets = self.markets.iter().cloned().collect();
        vec![unsubscribe, self.subscribe("orderbook_delta", Some(markets))]
    }
}
