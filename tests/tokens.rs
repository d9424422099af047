//! Client values against the SQL and the tokens, over real gRPC against a real PostgreSQL: tickers and trade ids
//! made of quotes, backslashes, array syntax and SQL select exactly their own rows and never appear in the text
//! of a statement; page and resume tokens are signed with the database's key, so a token altered, forged with
//! the old unkeyed checksum or made by another database is refused, and one survives a server restart.

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use common::{TIMEOUT, TestDb, collect, summary_of, trades_of};
use kalshi_replay::{
    error::Error,
    proto::{
        FillPolicy, ListMarketsRequest, StreamCandlesRequest, StreamTradesRequest, StreamTradesResponse, Trade,
        reference_service_client::ReferenceServiceClient, replay_service_client::ReplayServiceClient,
        stream_candles_response,
    },
    server::{self, Pools, ServerOptions},
};
use prost::Message;
use prost_types::Timestamp;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, transport::Channel};

/// Tickers a careless or hostile client may send: SQL, quotes, backslashes, and the characters of PostgreSQL's
/// array syntax (braces, commas, double quotes, the word NULL, spaces).
const HOSTILE: [&str; 4] =
    ["KX'); DROP TABLE trades; --", "KX\\'\"{a,b}\\", "NULL", "KX \"x\" ,}{ \\\\'' $1 %s E'\\\\x00'"];
/// A trade id that would end a literal and run a statement.
const HOSTILE_ID: &str = "id'); SELECT pg_sleep(100); --";

fn ts(s: &str) -> Timestamp {
    let t = DateTime::parse_from_rfc3339(s).expect("time");
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn trades_request(markets: &[&str]) -> StreamTradesRequest {
    StreamTradesRequest {
        market_tickers: markets.iter().map(|m| (*m).to_owned()).collect(),
        start_time: Some(ts("2026-01-05T00:00:00Z")),
        end_time: Some(ts("2026-01-08T00:00:00Z")),
        ..Default::default()
    }
}

/// The server in this process over `db`, so that a test can stop it and start another on the same database.
struct Served {
    channel: Channel,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), Error>>,
}

impl Served {
    async fn start(db: &TestDb) -> Self {
        let pools = Pools::open(&db.database(), 4, 2, TIMEOUT).await.expect("pools");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel();
        let options =
            ServerOptions { partitions_ahead: 0, health_interval: Duration::from_millis(200), ..Default::default() };
        let task = tokio::spawn(server::run(listener, pools, options, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        Self { channel, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task").expect("server stopped cleanly");
    }

    fn replay(&self) -> ReplayServiceClient<Channel> {
        ReplayServiceClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    fn reference(&self) -> ReferenceServiceClient<Channel> {
        ReferenceServiceClient::new(self.channel.clone())
    }
}

/// A database holding the hostile markets and `per_market` trades of each (with hostile trade ids) over three
/// days, and a plain market KXA, all written with bound parameters.
async fn hostile_db(per_market: i64) -> TestDb {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let from = "2026-01-04T00:00:00Z".parse::<DateTime<Utc>>().expect("t");
    let to = "2026-01-09T00:00:00Z".parse::<DateTime<Utc>>().expect("t");
    kalshi_replay::store::partitions::ensure_range(&client, from, to).await.expect("partitions");
    for ticker in HOSTILE.iter().chain(&["KXA"]) {
        client
            .execute(
                "INSERT INTO markets (ticker, event_ticker, series_ticker, status, close_time, updated_at)
                 VALUES ($1, $1 || '-E', $1 || '-S', 3, NULL, now())",
                &[ticker],
            )
            .await
            .expect("market");
        // spread over three days, a trade every 3 days / per_market, ids hostile too
        client
            .execute(
                "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
                 SELECT '2026-01-05T00:00:00Z'::timestamptz + g * (interval '259000 seconds' / $2::bigint),
                        $1, $3 || g, 100000 + (g % 800) * 1000, 100 + g % 7, 1 + g % 2
                   FROM generate_series(0, $2::bigint - 1) g",
                &[ticker, &per_market, &HOSTILE_ID],
            )
            .await
            .expect("trades");
    }
    db
}

/// The trades of `markets` in the contract's order, read with bound parameters.
async fn expected(db: &TestDb, markets: &[&str]) -> Vec<(String, String)> {
    let markets: Vec<String> = markets.iter().map(|m| (*m).to_owned()).collect();
    db.client()
        .await
        .query(
            "SELECT ticker, trade_id FROM trades WHERE ticker = ANY($1) ORDER BY ts, ticker COLLATE \"C\", trade_id COLLATE \"C\"",
            &[&markets],
        )
        .await
        .expect("expected")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn keys(trades: &[Trade]) -> Vec<(String, String)> {
    trades.iter().map(|t| (t.market_ticker.clone(), t.trade_id.clone())).collect()
}

#[tokio::test]
async fn hostile_tickers_and_trade_ids_select_exactly_their_own_rows() {
    let db = hostile_db(300).await;
    let served = Served::start(&db).await;
    let mut client = served.replay();

    // each alone (one market: the index walk), then several together (the hashed set)
    for ticker in HOSTILE {
        let got = collect(client.stream_trades(trades_request(&[ticker])).await.expect(ticker).into_inner()).await;
        let got = got.unwrap_or_else(|e| panic!("{ticker}: {e:?}"));
        assert_eq!(keys(&trades_of(&got)), expected(&db, &[ticker]).await, "{ticker}");
        assert_eq!(summary_of(&got).item_count, 300, "{ticker}");
    }
    let several = [HOSTILE[0], HOSTILE[1], HOSTILE[3], "KXA"];
    let whole = collect(client.stream_trades(trades_request(&several)).await.expect("several").into_inner())
        .await
        .expect("several");
    assert_eq!(keys(&trades_of(&whole)), expected(&db, &several).await);

    // resumed after every few trades: the keys in the tokens hold the hostile ticker and trade id
    let small = StreamTradesRequest { batch_size: 97, ..trades_request(&several) };
    let cut = collect(client.stream_trades(small.clone()).await.expect("cut").into_inner()).await.expect("cut");
    for at in [0, 3, cut.len() / 2, cut.len() - 3] {
        let resumed = StreamTradesRequest { resume_token: cut[at].resume_token.clone(), ..small.clone() };
        let rest = collect(client.stream_trades(resumed).await.expect("resumed").into_inner()).await.expect("rest");
        let mut joined = trades_of(&cut[..=at]);
        joined.extend(trades_of(&rest));
        assert_eq!(joined, trades_of(&whole), "resumed after message {at}");
        assert_eq!(summary_of(&rest), summary_of(&whole));
    }

    // candles read the aggregates with the same bound markets: one market by day, several by minute and day
    for (markets, interval) in [(&several[..1], 86_400), (&several[..], 60), (&several[..], 86_400)] {
        let request = StreamCandlesRequest {
            market_tickers: markets.iter().map(|m| (*m).to_owned()).collect(),
            start_time: Some(ts("2026-01-05T00:00:00Z")),
            end_time: Some(ts("2026-01-08T00:00:00Z")),
            interval_seconds: interval,
            fill_policy: FillPolicy::None as i32,
            ..Default::default()
        };
        let messages = collect(client.stream_candles(request).await.expect("candles").into_inner()).await;
        let messages = messages.unwrap_or_else(|e| panic!("{markets:?} {interval}: {e:?}"));
        let mut volume = std::collections::HashMap::<String, i64>::new();
        for message in &messages {
            if let Some(stream_candles_response::Payload::Candles(batch)) = &message.payload {
                for candle in &batch.candles {
                    *volume.entry(candle.market_ticker.clone()).or_default() += candle.volume_centi;
                }
            }
        }
        let rows = db
            .client()
            .await
            .query(
                "SELECT ticker, sum(count_centi)::bigint FROM trades WHERE ticker = ANY($1) GROUP BY 1",
                &[&markets.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>()],
            )
            .await
            .expect("volumes");
        let expected: std::collections::HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(volume, expected, "{markets:?} at {interval} s");
    }

    // nothing broke
    let count: i64 = db.client().await.query_one("SELECT count(*) FROM trades", &[]).await.expect("trades").get(0);
    assert_eq!(count, 5 * 300);
    served.stop().await;
}

/// The text of the replay COPYs running in `database`.
async fn running_copies(db: &TestDb) -> Vec<String> {
    let admin = db.admin().await;
    for _ in 0..100 {
        let rows = admin
            .query(
                "SELECT query FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE 'COPY (SELECT %'",
                &[&db.name],
            )
            .await
            .expect("pg_stat_activity");
        if !rows.is_empty() {
            return rows.iter().map(|r| r.get(0)).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no COPY runs");
}

#[tokio::test]
async fn client_strings_never_reach_the_text_of_a_statement() {
    // enough trades that a stream that reads one message keeps its COPY running (paused by backpressure)
    let db = hostile_db(60_000).await;
    let served = Served::start(&db).await;
    let mut client = served.replay();
    let request = StreamTradesRequest { batch_size: 1, ..trades_request(&[HOSTILE[0], HOSTILE[1]]) };
    let mut stream = client.stream_trades(request.clone()).await.expect("stream").into_inner();
    let first = stream.message().await.expect("message").expect("data");
    for sql in running_copies(&db).await {
        for value in [HOSTILE[0], HOSTILE[1], "DROP TABLE", "KX\\'"] {
            assert!(!sql.contains(value), "{value:?} is in the statement: {sql}");
        }
    }
    drop(stream);

    // a resumed stream: the key of the last trade (a hostile ticker and trade id) is bound too
    let resumed = StreamTradesRequest { resume_token: first.resume_token.clone(), ..request };
    let mut stream = client.stream_trades(resumed).await.expect("resumed").into_inner();
    stream.message().await.expect("message").expect("data");
    for sql in running_copies(&db).await {
        for value in [HOSTILE[0], HOSTILE[1], HOSTILE_ID, "pg_sleep"] {
            assert!(!sql.contains(value), "{value:?} is in the statement: {sql}");
        }
    }
    drop(stream);
    served.stop().await;
}

/// A resume token and a page token of `served`, for the same requests on another server.
async fn tokens_of(served: &Served) -> (String, String) {
    let request = StreamTradesRequest { batch_size: 50, ..trades_request(&[HOSTILE[0], "KXA"]) };
    let messages = collect(served.replay().stream_trades(request).await.expect("stream").into_inner()).await;
    let resume = messages.expect("messages")[1].resume_token.clone();
    let page = served
        .reference()
        .list_markets(ListMarketsRequest { page_size: 2, ..Default::default() })
        .await
        .expect("page")
        .into_inner()
        .next_page_token;
    assert!(!resume.is_empty() && !page.is_empty());
    (resume, page)
}

/// Continues the stream and the listing of [`tokens_of`] with `resume` and `page` on `served`.
async fn continue_with(
    served: &Served,
    resume: &str,
    page: &str,
) -> (Result<Vec<StreamTradesResponse>, tonic::Status>, Result<Vec<String>, tonic::Status>) {
    let request =
        StreamTradesRequest { batch_size: 50, resume_token: resume.to_owned(), ..trades_request(&[HOSTILE[0], "KXA"]) };
    let stream = match served.replay().stream_trades(request).await {
        Ok(answer) => collect(answer.into_inner()).await,
        Err(status) => Err(status),
    };
    let listing = served
        .reference()
        .list_markets(ListMarketsRequest { page_size: 2, page_token: page.to_owned(), ..Default::default() })
        .await
        .map(|answer| answer.into_inner().markets.into_iter().map(|m| m.ticker).collect());
    (stream, listing)
}

fn assert_refused<T>(answer: Result<T, tonic::Status>, field: &str, what: &str) {
    let Err(status) = answer else { panic!("{what} was accepted") };
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(status.message().starts_with(&format!("{field}: ")), "{what}: {}", status.message());
}

#[tokio::test]
async fn tokens_survive_a_server_restart_on_the_same_database() {
    let db = hostile_db(300).await;
    let first = Served::start(&db).await;
    let (resume, page) = tokens_of(&first).await;
    let (stream, listing) = continue_with(&first, &resume, &page).await;
    let (stream, listing) = (stream.expect("stream"), listing.expect("listing"));
    first.stop().await;

    let second = Served::start(&db).await;
    let (again, listed) = continue_with(&second, &resume, &page).await;
    let again = again.expect("the token of the first server resumes on the second");
    assert_eq!(trades_of(&again), trades_of(&stream));
    assert_eq!(summary_of(&again), summary_of(&stream));
    assert_eq!(listed.expect("the page token too"), listing);
    second.stop().await;
}

#[tokio::test]
async fn tokens_of_another_database_are_refused() {
    let ours = hostile_db(300).await;
    // test databases are clones of one template, and so share its key: give this one a key of its own, as
    // migration 0008 does for every new database
    let theirs = hostile_db(300).await;
    theirs
        .client()
        .await
        .batch_execute(
            "UPDATE token_key SET key = decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')",
        )
        .await
        .expect("new key");
    let (ours, theirs) = (Served::start(&ours).await, Served::start(&theirs).await);
    let (resume, page) = tokens_of(&theirs).await;
    let (stream, listing) = continue_with(&ours, &resume, &page).await;
    assert_refused(stream, "resume_token", "a resume token of another database");
    assert_refused(listing, "page_token", "a page token of another database");
    // and each server still takes its own
    let (own_resume, own_page) = tokens_of(&ours).await;
    let (stream, listing) = continue_with(&ours, &own_resume, &own_page).await;
    stream.expect("own resume token");
    listing.expect("own page token");
    ours.stop().await;
    theirs.stop().await;
}

/// `raw` with the position's key replaced by `key` and signed as version 1 did: an unkeyed SHA-256 that anyone
/// can compute. The tag of the token it came from is 8 bytes (version 1) or 16 (version 2).
fn forge_unkeyed(token: &str, position_key: impl FnOnce(&mut Vec<u8>)) -> String {
    let raw = URL_SAFE_NO_PAD.decode(token).expect("base64");
    let tag = if raw[0] == 1 { 8 } else { 16 };
    let mut body = raw[..raw.len() - tag].to_vec();
    body[0] = 1;
    position_key(&mut body);
    let sum = Sha256::digest(&body);
    body.extend_from_slice(&sum[..8]);
    URL_SAFE_NO_PAD.encode(body)
}

#[tokio::test]
async fn altered_and_forged_tokens_are_refused() {
    let db = hostile_db(300).await;
    let served = Served::start(&db).await;
    let (resume, page) = tokens_of(&served).await;

    // any byte altered, in the resume token and the page token
    let raw = URL_SAFE_NO_PAD.decode(&resume).expect("base64");
    for i in 0..raw.len() {
        let mut altered = raw.clone();
        altered[i] ^= 0x20;
        let (stream, _) = continue_with(&served, &URL_SAFE_NO_PAD.encode(altered), &page).await;
        assert_refused(stream, "resume_token", &format!("resume token with byte {i} altered"));
    }
    let raw = URL_SAFE_NO_PAD.decode(&page).expect("base64");
    for i in 0..raw.len() {
        let mut altered = raw.clone();
        altered[i] ^= 0x20;
        let (_, listing) = continue_with(&served, &resume, &URL_SAFE_NO_PAD.encode(altered)).await;
        assert_refused(listing, "page_token", &format!("page token with byte {i} altered"));
    }

    // forged with the unkeyed checksum: a resume position moved back to the first trade of the range, a page
    // that starts after a ticker of the client's choosing
    let forged_resume = forge_unkeyed(&resume, |body| {
        let len = body.len();
        body[len - 1] = b'0';
    });
    let forged_page = forge_unkeyed(&page, |body| {
        body.truncate(10);
        body.extend_from_slice(b"A");
    });
    let (stream, listing) = continue_with(&served, &forged_resume, &forged_page).await;
    assert_refused(stream, "resume_token", "a resume token forged with the unkeyed checksum");
    assert_refused(listing, "page_token", "a page token forged with the unkeyed checksum");

    // the binding of a request is public (a hash of its fields): a made-up token for it is refused as well
    let binding = Sha256::digest(trades_request(&[HOSTILE[0], "KXA"]).encode_to_vec());
    let mut made_up = vec![2, 5];
    made_up.extend_from_slice(&binding[..8]);
    made_up.extend_from_slice(&[0; 40]);
    let (stream, _) = continue_with(&served, &URL_SAFE_NO_PAD.encode(made_up), &page).await;
    assert_refused(stream, "resume_token", "a made-up token");
    served.stop().await;
}
