//! Every grpcurl recipe of the documentation runs as written and does what it says: the commands of the README's
//! ```sh blocks that call grpcurl, and the "Example:" lines of the .proto comments.
//!
//! Each recipe runs as a user runs it: pasted into bash (the resume recipe needs a pipe and a here-document), from
//! the repository's root, with the real grpcurl binary, against the real server on the demo's generated data; a
//! recipe that writes runs against a throwaway database of its own. The documented address (127.0.0.1:50051 or
//! localhost:50051, and `$A`) becomes the test server's. Its exit status, and a field or two of its output, are
//! checked against the expectation of the same id in [`EXPECTATIONS`]: a recipe without an expectation fails the
//! test, so a new recipe is checked, and so does an expectation without its recipe, so a removed one is noticed.

mod common;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use common::TestApp;
use kalshi_replay::generate::DatasetSpec;
use serde_json::Value;
use tokio_postgres::Client;

/// The address the documentation uses, in its two spellings.
const DOCUMENTED_ADDRESSES: [&str; 2] = ["127.0.0.1:50051", "localhost:50051"];

/// The most a recipe may print on the test's data (a tenth of the demo's trades): a recipe is something to read.
const MAX_OUTPUT: usize = 16 * 1024;

/// How long one recipe may take.
const RECIPE_TIMEOUT: Duration = Duration::from_secs(60);

/// The demo's dataset (`demo`'s defaults: seed 42, 200 markets, 7 days from 2026-01-05) with a tenth of its trades:
/// the generator plans the series, events, markets and settlements before it deals the trades out, so the tickers
/// are the demo's, and every market has about a tenth of its trades there.
fn dataset() -> DatasetSpec {
    DatasetSpec {
        seed: 42,
        markets: 200,
        days: 7,
        trades: 100_000,
        start: chrono::NaiveDate::from_ymd_opt(2026, 1, 5).expect("date"),
    }
}

/// Which server a recipe runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// The server on the generated data, shared by the recipes that only read.
    Data,
    /// A server on an empty migrated database of the recipe's own, dropped afterwards: for the writes.
    Fresh,
}

/// An expected value.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This text (a JSON string's content, or a number's or boolean's text).
    Is(&'static str),
    /// A text starting so.
    Prefix(&'static str),
    /// An integer at least this.
    AtLeast(i64),
    /// The text of this SQL query's value on the recipe's database (run as `SELECT (query)::text`).
    Sql(&'static str),
}

/// A check of a recipe's result. Paths address grpcurl's output, one JSON object per message, as an array of
/// messages: `/0/series/ticker` is the first message's series' ticker, `-1` the last element of an array, `*`
/// every element (`/*/trades/trades/*/tradeId` is every trade id of a stream).
#[derive(Debug, Clone, Copy)]
enum Check {
    /// The exit status is this: 64 + the gRPC status code for an error (69 is NOT_FOUND). Without this check it
    /// must be 0, with nothing on stderr.
    Exit(i32),
    /// stdout has this line, spaces around it aside.
    Line(&'static str),
    /// stdout or stderr contains this.
    Text(&'static str),
    /// Exactly one value at the path, equal to the wanted one.
    Eq(&'static str, Want),
    /// At least one value at the path, each equal to the wanted one.
    Each(&'static str, Want),
    /// The number of values at the path.
    Count(&'static str, Want),
}

use Check::{Count, Each, Eq, Exit, Line, Text};
use Want::{AtLeast, Is, Prefix, Sql};

/// What a recipe must do. It is the recipe of `source` (a file name) whose text, on one line, contains every string
/// of `id`: exactly one recipe must match.
#[derive(Debug)]
struct Expectation {
    source: &'static str,
    id: &'static [&'static str],
    on: On,
    checks: &'static [Check],
}

const fn expect(source: &'static str, id: &'static [&'static str], on: On, checks: &'static [Check]) -> Expectation {
    Expectation { source, id, on, checks }
}

const README: &str = "README.md";
const TRADES_AA: &str = "SELECT count(*) FROM trades JOIN markets USING (ticker) WHERE series_ticker = 'KXSYNAA' \
                         AND ts >= '2026-01-05T00:00:00Z' AND ts < '2026-01-05T01:00:00Z'";
const TRADES_AH_MINUTE: &str = "SELECT count(*) FROM trades WHERE ticker = 'KXSYNAH-26JAN10-B730.75' \
                                AND ts >= '2026-01-10T12:00:00Z' AND ts < '2026-01-10T12:01:00Z'";
const TRADES_AH_20S: &str = "SELECT count(*) FROM trades WHERE ticker = 'KXSYNAH-26JAN10-B730.75' \
                             AND ts >= '2026-01-10T12:00:00Z' AND ts < '2026-01-10T12:00:20Z'";
/// The hourly candles of series KXSYNAA in the first 3 hours of 2026-01-05: one per market and hour with trades.
const CANDLES_AA: &str = "SELECT count(DISTINCT (ticker, date_trunc('hour', ts AT TIME ZONE 'UTC'))) \
                          FROM trades JOIN markets USING (ticker) WHERE series_ticker = 'KXSYNAA' \
                          AND ts >= '2026-01-05T00:00:00Z' AND ts < '2026-01-05T03:00:00Z'";
/// The 10-minute periods of one market over 2 hours, from its first trade's period to the range's end.
const FILLED: &str = "SELECT 12 - floor(extract(epoch FROM min(ts) - '2026-01-05T00:00:00Z') / 600)::int \
                      FROM trades WHERE ticker = 'KXSYNAA-26JAN12-B9602.5' \
                      AND ts >= '2026-01-05T00:00:00Z' AND ts < '2026-01-05T02:00:00Z'";
/// Of those, the ones without a trade.
const FILLED_EMPTY: &str = "SELECT 12 - floor(extract(epoch FROM min(ts) - '2026-01-05T00:00:00Z') / 600)::int \
                            - count(DISTINCT floor(extract(epoch FROM ts) / 600)) \
                            FROM trades WHERE ticker = 'KXSYNAA-26JAN12-B9602.5' \
                            AND ts >= '2026-01-05T00:00:00Z' AND ts < '2026-01-05T02:00:00Z'";

/// Every recipe's expectation.
const EXPECTATIONS: &[Expectation] = &[
    // README: Try it with grpcurl
    expect(
        README,
        &["50051 list"],
        On::Data,
        &[
            Line("kalshi.replay.v1.ReferenceService"),
            Line("kalshi.replay.v1.ReplayService"),
            Line("kalshi.replay.v1.IngestService"),
            Line("grpc.health.v1.Health"),
            Line("grpc.reflection.v1alpha.ServerReflection"),
        ],
    ),
    expect(
        README,
        &["-plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check"],
        On::Data,
        &[Eq("/0/status", Is("SERVING"))],
    ),
    expect(
        README,
        &["Health/Check", r#""service": "kalshi.replay.v1.ReplayService""#],
        On::Data,
        &[Eq("/0/status", Is("SERVING"))],
    ),
    expect(
        README,
        &["describe kalshi.replay.v1.ReplayService"],
        On::Data,
        &[
            Text("rpc StreamTrades ( .kalshi.replay.v1.StreamTradesRequest ) returns ( stream"),
            Text("rpc StreamCandles"),
        ],
    ),
    expect(
        README,
        &["describe kalshi.replay.v1.Trade"],
        On::Data,
        &[Text("int64 yes_price_micros = 4;"), Text("int64 count_centi = 6;")],
    ),
    expect(
        README,
        &["-import-path proto -proto kalshi/replay/v1/replay.proto", "StreamCandles"],
        On::Data,
        &[
            Count("/*/candles/candles/*", Is("2")),
            Eq("/0/candles/candles/0/periodStart", Is("2026-01-09T00:00:00Z")),
            Eq(
                "/0/candles/candles/1/tradeCount",
                Sql("SELECT count(*) FROM trades WHERE ticker = 'KXSYNAH-26JAN10-B730.75' \
                 AND ts >= '2026-01-10T00:00:00Z' AND ts < '2026-01-11T00:00:00Z'"),
            ),
        ],
    ),
    // README: Reference lookups
    expect(
        README,
        &["ReferenceService/GetSeries"],
        On::Data,
        &[
            Eq("/0/series/ticker", Is("KXSYNAA")),
            Eq("/0/series/category", Sql("SELECT category FROM series WHERE ticker = 'KXSYNAA'")),
        ],
    ),
    expect(
        README,
        &["ReferenceService/ListSeries"],
        On::Data,
        &[
            Count("/0/series/*", Sql("SELECT least(count(*), 5) FROM series WHERE category = 'Crypto'")),
            Count("/0/series/*", AtLeast(2)),
            Each("/0/series/*/category", Is("Crypto")),
        ],
    ),
    expect(
        README,
        &["ReferenceService/GetEvent"],
        On::Data,
        &[
            Eq("/0/event/eventTicker", Is("KXSYNAA-26JAN06")),
            Count("/0/markets/*", Sql("SELECT count(*) FROM markets WHERE event_ticker = 'KXSYNAA-26JAN06'")),
            Each("/0/markets/*/eventTicker", Is("KXSYNAA-26JAN06")),
        ],
    ),
    expect(
        README,
        &["ReferenceService/ListEvents"],
        On::Data,
        &[Count("/0/events/*", AtLeast(1)), Each("/0/events/*/seriesTicker", Is("KXSYNAA"))],
    ),
    expect(
        README,
        &["ReferenceService/GetMarket", "B730.75"],
        On::Data,
        &[
            Eq("/0/market/ticker", Is("KXSYNAH-26JAN10-B730.75")),
            Eq("/0/market/eventTicker", Is("KXSYNAH-26JAN10")),
            Eq("/0/market/floorStrike", Is("730.5")),
        ],
    ),
    expect(
        README,
        &["ReferenceService/GetMarket", "-B1\""],
        On::Data,
        &[Exit(69), Text("Code: NotFound"), Text("unknown market ticker: KXSYNAA-26JAN06-B1")],
    ),
    expect(
        README,
        &["ReferenceService/ListMarkets"],
        On::Data,
        &[
            Count("/0/markets/*", Sql("SELECT count(*) FROM markets WHERE event_ticker = 'KXSYNAA-26JAN06'")),
            Each("/0/markets/*/eventTicker", Is("KXSYNAA-26JAN06")),
        ],
    ),
    expect(
        README,
        &["ReferenceService/GetSettlement"],
        On::Data,
        &[
            Eq("/0/settlement/marketTicker", Is("KXSYNAA-26JAN06-B9562.5")),
            Eq(
                "/0/settlement/settlementValueMicros",
                Sql("SELECT settlement_value_micros FROM settlements WHERE market_ticker = 'KXSYNAA-26JAN06-B9562.5'"),
            ),
        ],
    ),
    expect(
        README,
        &["ReferenceService/ListSettlements"],
        On::Data,
        &[
            Count("/0/settlements/*", AtLeast(1)),
            Each("/0/settlements/*/result", Is("SETTLEMENT_RESULT_YES")),
            Each("/0/settlements/*/seriesTicker", Is("KXSYNAA")),
        ],
    ),
    expect(
        README,
        &["ReferenceService/GetCoverage"],
        On::Data,
        &[
            Count("/0/markets/*", Is("2")),
            Eq("/0/markets/0/tradeCount", Sql("SELECT count(*) FROM trades WHERE ticker = 'KXSYNAH-26JAN10-B730.75'")),
        ],
    ),
    // README: Trade replay
    expect(
        README,
        &["StreamTrades", r#""batch_size": 2}' $A"#],
        On::Data,
        &[
            Eq("/-1/summary/itemCount", Sql(TRADES_AA)),
            Count("/*/trades/trades/*", Sql(TRADES_AA)),
            Count("/*/trades/trades/*", AtLeast(2)),
            Count("/0/trades/trades/*", Is("2")),
            Each("/*/trades/trades/*/marketTicker", Prefix("KXSYNAA-")),
            Count("/*/resumeToken", AtLeast(1)),
        ],
    ),
    expect(
        README,
        &["StreamTrades", "LAYOUT_COLUMNS"],
        On::Data,
        &[
            Eq("/-1/summary/itemCount", Sql(TRADES_AH_MINUTE)),
            Count("/*/columns/tradeId/*", Sql(TRADES_AH_MINUTE)),
            Count("/*/columns/tradeId/*", AtLeast(1)),
            Eq("/0/columns/newMarketTickers/0", Is("KXSYNAH-26JAN10-B730.75")),
        ],
    ),
    expect(
        README,
        &["StreamTrades", "resume_token", "$TOKEN"],
        On::Data,
        &[
            // the whole request's summary, the trades after the first message's two
            Eq("/-1/summary/itemCount", Sql(TRADES_AH_20S)),
            Count(
                "/*/trades/trades/*",
                Sql("SELECT count(*) - 2 FROM trades WHERE ticker = 'KXSYNAH-26JAN10-B730.75' \
                                          AND ts >= '2026-01-10T12:00:00Z' AND ts < '2026-01-10T12:00:20Z'"),
            ),
            Count("/*/trades/trades/*", AtLeast(1)),
            Eq(
                "/0/trades/trades/0/tradeId",
                Sql("SELECT trade_id FROM trades WHERE ticker = 'KXSYNAH-26JAN10-B730.75' \
                 AND ts >= '2026-01-10T12:00:00Z' AND ts < '2026-01-10T12:00:20Z' \
                 ORDER BY ts, trade_id OFFSET 2 LIMIT 1"),
            ),
        ],
    ),
    // README: Candles
    expect(
        README,
        &["StreamCandles", r#""interval_seconds": 3600}' $A"#],
        On::Data,
        &[
            Count("/*/candles/candles/*", Sql(CANDLES_AA)),
            Count("/*/candles/candles/*", AtLeast(2)),
            Eq("/-1/summary/itemCount", Sql(CANDLES_AA)),
            Each("/*/candles/candles/*/marketTicker", Prefix("KXSYNAA-")),
        ],
    ),
    expect(
        README,
        &["StreamCandles", "FILL_POLICY_PREVIOUS"],
        On::Data,
        &[
            Count("/*/candles/candles/*", Sql(FILLED)),
            Count("/*/candles/candles/*/empty", Sql(FILLED_EMPTY)),
            Count("/*/candles/candles/*/empty", AtLeast(1)),
            Eq("/0/candles/candles/-1/periodEnd", Is("2026-01-05T02:00:00Z")),
        ],
    ),
    // README: IngestService
    expect(
        README,
        &["IngestService/IngestTrades"],
        On::Fresh,
        &[
            Eq("/0/counts/inserted", Is("1")),
            Eq("/0/marketsWithoutReference", Is("1")),
            Eq("/0/watermark", Sql("SELECT watermark FROM data_version")),
        ],
    ),
    expect(
        README,
        &["IngestService/IngestOrderbook"],
        On::Fresh,
        &[
            Eq("/0/deltas/inserted", Is("1")),
            Eq("/0/watermark", Sql("SELECT max(ingest_seq) FROM orderbook_deltas WHERE sid = 7 AND seq = 42")),
        ],
    ),
    expect(
        README,
        &["IngestService/UpsertSeries"],
        On::Fresh,
        &[
            Eq("/0/counts/inserted", Is("1")),
            Eq("/0/counts/inserted", Sql("SELECT count(*) FROM series WHERE ticker = 'KXNEW'")),
        ],
    ),
    // the .proto comments
    expect(
        "replay.proto",
        &["StreamTrades"],
        On::Data,
        &[
            Eq("/-1/summary/itemCount", Sql(TRADES_AA)),
            Count("/*/trades/trades/*", Sql(TRADES_AA)),
            Count("/*/trades/trades/*", AtLeast(2)),
        ],
    ),
    expect(
        "replay.proto",
        &["StreamCandles"],
        On::Data,
        &[Count("/*/candles/candles/*", Sql(CANDLES_AA)), Count("/*/candles/candles/*", AtLeast(2))],
    ),
    expect(
        "replay.proto",
        &["StreamKalshiCandles"],
        On::Data,
        &[
            Count("/*/candles/candles/*", Is("0")),
            Eq("/0/summary/watermark", Sql("SELECT watermark FROM data_version")),
        ],
    ),
    expect(
        README,
        &["StreamKalshiCandles"],
        On::Data,
        &[
            Count("/*/candles/candles/*", Is("0")),
            Eq("/0/summary/watermark", Sql("SELECT watermark FROM data_version")),
        ],
    ),
    expect(
        "ingest.proto",
        &["IngestTrades"],
        On::Fresh,
        &[Eq("/0/counts/inserted", Is("1")), Eq("/0/watermark", Sql("SELECT watermark FROM data_version"))],
    ),
    expect(
        "ingest.proto",
        &["UpsertSeries"],
        On::Fresh,
        &[
            Eq("/0/counts/inserted", Is("1")),
            Eq("/0/counts/inserted", Sql("SELECT count(*) FROM series WHERE ticker = 'KXBTCD'")),
        ],
    ),
];

/// A recipe as the documentation gives it.
#[derive(Debug)]
struct Recipe {
    /// Its file (relative to the repository's root) and first line.
    place: String,
    /// The file's name.
    source: String,
    /// The shell assignments before it in its block (`A=...`, `TOKEN=$(grpcurl ...)`), run first.
    setup: Vec<String>,
    /// The command as written: continuation lines and here-document included.
    command: String,
}

impl Recipe {
    /// Its setup and command on one line each joined, for matching ids.
    fn flat(&self) -> String {
        let mut all = self.setup.clone();
        all.push(self.command.clone());
        all.iter().map(|c| c.replace("\\\n", " ").replace('\n', " ")).collect::<Vec<_>>().join(" ")
    }

    fn matches(&self, e: &Expectation) -> bool {
        let flat = self.flat();
        self.source == e.source && e.id.iter().all(|part| flat.contains(part))
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a command is a shell assignment (`NAME=value`).
fn is_assignment(command: &str) -> bool {
    let name_len = command.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    name_len > 0 && command.as_bytes().get(name_len) == Some(&b'=') && !command.as_bytes()[0].is_ascii_digit()
}

/// The commands of the README's ```sh blocks that use grpcurl. Within such a block every command is a grpcurl
/// command or an assignment (setup for the commands after it); comments and blank lines are skipped; a line ending
/// in `\` continues on the next; a `<<WORD` here-document runs up to its `WORD` line.
fn readme_recipes(text: &str) -> Result<Vec<Recipe>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut recipes = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```sh" {
            i += 1;
            continue;
        }
        i += 1;
        // the block's commands with their first line numbers
        let mut commands: Vec<(usize, String)> = Vec::new();
        while i < lines.len() && lines[i].trim() != "```" {
            let line = lines[i].trim_start();
            let start = i + 1;
            i += 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut command = line.to_owned();
            while command.ends_with('\\') && i < lines.len() {
                command.push('\n');
                command.push_str(lines[i]);
                i += 1;
            }
            if let Some(word) = heredoc_word(&command) {
                loop {
                    let Some(next) = lines.get(i) else { return Err(format!("README.md:{start}: {word} never ends")) };
                    command.push('\n');
                    command.push_str(next);
                    i += 1;
                    if next.trim() == word {
                        break;
                    }
                }
            }
            commands.push((start, command));
        }
        i += 1;
        if !commands.iter().any(|(_, c)| c.contains("grpcurl")) {
            continue;
        }
        let mut setup = Vec::new();
        for (start, command) in commands {
            if is_assignment(&command) {
                setup.push(command);
            } else if command.starts_with("grpcurl ") {
                recipes.push(Recipe {
                    place: format!("README.md:{start}"),
                    source: README.to_owned(),
                    setup: setup.clone(),
                    command,
                });
            } else {
                return Err(format!("README.md:{start}: neither grpcurl nor an assignment, the test cannot run it"));
            }
        }
    }
    Ok(recipes)
}

/// The word that ends the command's here-document, if it has one.
fn heredoc_word(command: &str) -> Option<String> {
    let after = &command[command.find("<<")? + 2..];
    let after = after.strip_prefix('-').unwrap_or(after);
    let word: String = after
        .trim_start()
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// The "Example: grpcurl ..." lines of a .proto file's comments, each with its indented continuation lines.
fn proto_recipes(path: &str, text: &str) -> Vec<Recipe> {
    let source = Path::new(path).file_name().and_then(|n| n.to_str()).expect("file name").to_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut recipes = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let comment = line.trim_start().trim_start_matches("//").trim_start();
        let Some(first) = comment.strip_prefix("Example: ") else { continue };
        let mut command = first.trim().to_owned();
        for next in &lines[i + 1..] {
            let Some(rest) = next.trim_start().strip_prefix("//   ") else { break };
            command.push(' ');
            command.push_str(rest.trim());
        }
        recipes.push(Recipe { place: format!("{path}:{}", i + 1), source: source.clone(), setup: Vec::new(), command });
    }
    recipes
}

/// Every recipe of the README and the .proto files.
fn all_recipes() -> Vec<Recipe> {
    let readme = std::fs::read_to_string(root().join(README)).expect("README.md");
    let mut recipes = readme_recipes(&readme).unwrap_or_else(|e| panic!("{e}"));
    let dir = root().join("proto/kalshi/replay/v1");
    let mut protos: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("proto dir").map(|e| e.expect("entry").path()).collect();
    protos.sort();
    for path in protos.iter().filter(|p| p.extension().is_some_and(|e| e == "proto")) {
        let text = std::fs::read_to_string(path).expect("proto");
        let relative = path.strip_prefix(root()).expect("under the root").to_string_lossy().into_owned();
        let found = proto_recipes(&relative, &text);
        assert!(found.iter().all(|r| r.command.starts_with("grpcurl ")), "an Example: that is not grpcurl: {found:?}");
        recipes.extend(found);
    }
    recipes
}

/// What running a recipe gave.
#[derive(Debug)]
struct Ran {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs a recipe with bash from the repository's root, `grpcurl` being the real binary, against `addr`.
async fn run(recipe: &Recipe, addr: SocketAddr) -> Ran {
    let mut script = String::from("set -euo pipefail\ngrpcurl() { \"$GRPCURL\" \"$@\"; }\n");
    for line in recipe.setup.iter().chain([&recipe.command]) {
        script.push_str(line);
        script.push('\n');
    }
    for documented in DOCUMENTED_ADDRESSES {
        script = script.replace(documented, &addr.to_string());
    }
    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root())
        .env("GRPCURL", common::grpcurl())
        .env("A", addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bash");
    let output = tokio::time::timeout(RECIPE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{}: still running after {RECIPE_TIMEOUT:?}", recipe.place))
        .expect("bash");
    Ran {
        status: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// grpcurl's output: one JSON object per message.
fn messages(stdout: &str) -> Result<Value, String> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
        .map_err(|e| format!("output is not grpcurl's JSON: {e}"))
}

/// The values at `path` (see [`Check`]).
fn select<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![root];
    for segment in path.split('/').skip(1) {
        let mut next = Vec::new();
        for value in current {
            match (value, segment) {
                (Value::Array(items), "*") => next.extend(items),
                (Value::Array(items), "-1") => next.extend(items.last()),
                (Value::Array(items), index) => next.extend(index.parse::<usize>().ok().and_then(|i| items.get(i))),
                (Value::Object(fields), key) => next.extend(fields.get(key)),
                _ => {}
            }
        }
        current = next;
    }
    current
}

/// A value as text: a string's content, else its JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `got` is what `want` asks for.
async fn satisfies(got: &str, want: Want, db: &Client) -> Result<(), String> {
    let ok = match want {
        Is(expected) => got == expected,
        Prefix(prefix) => got.starts_with(prefix),
        AtLeast(n) => got.parse::<i64>().is_ok_and(|v| v >= n),
        Sql(query) => {
            let row =
                db.query_one(&format!("SELECT ({query})::text"), &[]).await.map_err(|e| format!("{query}: {e}"))?;
            let expected: Option<String> = row.get(0);
            if Some(got) != expected.as_deref() {
                return Err(format!("got {got:?}, want {expected:?}, the value of {query}"));
            }
            true
        }
    };
    if ok { Ok(()) } else { Err(format!("got {got:?}, want {want:?}")) }
}

/// Every check of `expectation` on what the recipe gave; the failures, one per line.
async fn verify(expectation: &Expectation, ran: &Ran, db: &Client) -> Vec<String> {
    let mut failures = Vec::new();
    let exit = expectation.checks.iter().find_map(|c| if let Exit(code) = c { Some(*code) } else { None });
    if ran.status != Some(exit.unwrap_or(0)) {
        failures.push(format!("exit status {:?}, want {}", ran.status, exit.unwrap_or(0)));
    }
    if exit.is_none() && !ran.stderr.is_empty() {
        failures.push(format!("stderr: {}", ran.stderr.trim()));
    }
    if ran.stdout.len() > MAX_OUTPUT {
        failures.push(format!("{} bytes of output, more than {MAX_OUTPUT}: use a smaller range", ran.stdout.len()));
    }
    let parsed = messages(&ran.stdout);
    for check in expectation.checks {
        let result = match *check {
            Exit(_) => Ok(()),
            Line(line) => match ran.stdout.lines().any(|l| l.trim() == line) {
                true => Ok(()),
                false => Err(format!("no line {line:?}")),
            },
            Text(part) => match ran.stdout.contains(part) || ran.stderr.contains(part) {
                true => Ok(()),
                false => Err(format!("no {part:?} in the output")),
            },
            Eq(path, want) | Each(path, want) | Count(path, want) => match &parsed {
                Err(e) => Err(e.clone()),
                Ok(all) => {
                    let values = select(all, path);
                    match check {
                        Eq(..) if values.len() != 1 => Err(format!("{} values", values.len())),
                        Each(..) if values.is_empty() => Err("no value".to_owned()),
                        Count(..) => satisfies(&values.len().to_string(), want, db).await,
                        _ => {
                            let mut result = Ok(());
                            for value in values {
                                result = result.and(satisfies(&text(value), want, db).await);
                            }
                            result
                        }
                    }
                }
            }
            .map_err(|e| format!("{check:?}: {e}")),
        };
        if let Err(e) = result {
            failures.push(e);
        }
    }
    failures
}

/// The documentation's recipes and the expectations pair up one to one.
fn pair(recipes: &[Recipe]) -> Vec<(&Recipe, &'static Expectation)> {
    let mut problems = String::new();
    let mut pairs = Vec::new();
    for recipe in recipes {
        let matching: Vec<&Expectation> = EXPECTATIONS.iter().filter(|e| recipe.matches(e)).collect();
        match matching[..] {
            [one] => pairs.push((recipe, one)),
            [] => {
                let _ = writeln!(problems, "{}: no expectation checks this recipe: {}", recipe.place, recipe.flat());
            }
            _ => {
                let _ = writeln!(problems, "{}: several expectations match: {matching:?}", recipe.place);
            }
        }
    }
    for expectation in EXPECTATIONS {
        let matching = recipes.iter().filter(|r| r.matches(expectation)).count();
        if matching != 1 {
            let _ = writeln!(problems, "{matching} recipes match {expectation:?} (must be 1)");
        }
    }
    assert!(problems.is_empty(), "recipes and expectations do not pair up:\n{problems}");
    pairs
}

#[test]
fn recipes_are_found_and_each_has_its_expectation() {
    let recipes = all_recipes();
    assert!(recipes.iter().any(|r| r.source == README) && recipes.iter().any(|r| r.source.ends_with(".proto")));
    assert_eq!(pair(&recipes).len(), EXPECTATIONS.len());
}

#[test]
fn extraction_joins_continuations_and_here_documents_and_keeps_setup() {
    let text = "```sh\nA=127.0.0.1:50051\n# a comment\ngrpcurl -plaintext \\\n  $A list\nT=$(grpcurl x)\n\
                grpcurl -d @ $A y <<EOF\n{\"k\": \"$T\"}\nEOF\n```\n```sh\ncargo run\n```\n";
    let recipes = readme_recipes(text).expect("extracted");
    assert_eq!(recipes.len(), 2, "{recipes:?}");
    assert_eq!(recipes[0].command, "grpcurl -plaintext \\\n  $A list");
    assert_eq!(recipes[0].setup, ["A=127.0.0.1:50051"]);
    assert_eq!(recipes[0].place, "README.md:4");
    assert_eq!(recipes[1].setup, ["A=127.0.0.1:50051", "T=$(grpcurl x)"]);
    assert_eq!(recipes[1].command, "grpcurl -d @ $A y <<EOF\n{\"k\": \"$T\"}\nEOF");
    assert!(readme_recipes("```sh\ngrpcurl a\necho b\n```\n").is_err(), "an unknown command is refused");

    let proto = "  // Example: grpcurl -d '{\"a\": 1,\n  //   \"b\": 2}' localhost:50051\n  //   x.Y/Z\n  rpc Z(A) returns (B);\n";
    let recipes = proto_recipes("p/x.proto", proto);
    assert_eq!(recipes.len(), 1);
    assert_eq!(recipes[0].command, "grpcurl -d '{\"a\": 1, \"b\": 2}' localhost:50051 x.Y/Z");
    assert_eq!(recipes[0].place, "p/x.proto:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipe_runs_and_prints_what_it_says() {
    let recipes = all_recipes();
    let pairs = pair(&recipes);
    let started = Instant::now();
    let data = TestApp::with_dataset(&dataset()).await;
    let data_db = data.db.client().await;
    eprintln!("generated the data in {:?}", started.elapsed());

    let mut report = String::new();
    for (recipe, expectation) in pairs {
        let began = Instant::now();
        let failures = match expectation.on {
            On::Data => verify(expectation, &run(recipe, data.addr).await, &data_db).await,
            On::Fresh => {
                let fresh = TestApp::start().await;
                let ran = run(recipe, fresh.addr).await;
                let failures = verify(expectation, &ran, &fresh.db.client().await).await;
                fresh.stop().await.expect("fresh server stops");
                failures
            }
        };
        eprintln!("{} ({:?}): {} in {:?}", recipe.place, expectation.on, expectation.id.join(" "), began.elapsed());
        if !failures.is_empty() {
            let _ = writeln!(report, "{}: {}\n  {}", recipe.place, recipe.flat(), failures.join("\n  "));
        }
    }
    assert!(report.is_empty(), "recipes that do not do what the documentation says:\n{report}");
    data.stop().await.expect("server stops");
}
