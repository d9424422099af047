//! ReferenceService over real gRPC: every lookup, each filter alone and combined, keyset paging (also under
//! concurrent inserts), every error path, and the hierarchy round trip on generated data.

mod common;

use std::collections::BTreeSet;

use chrono::NaiveDate;
use common::TestApp;
use kalshi_replay::{
    generate::{DatasetSpec, generate},
    proto::{
        Event, GetEventRequest, GetMarketRequest, GetSeriesRequest, GetSettlementRequest, ListEventsRequest,
        ListMarketsRequest, ListSeriesRequest, ListSettlementsRequest, Market, MarketStatus, MarketType, Series,
        Settlement, SettlementResult, reference_service_client::ReferenceServiceClient,
    },
};
use prost_types::Timestamp;
use tonic::{Code, transport::Channel};

type Client = ReferenceServiceClient<Channel>;

/// A small hand-made hierarchy whose every filter outcome is known.
const FIXTURE: &str = "
INSERT INTO series (ticker, title, category, tags, frequency, updated_at) VALUES
  ('KXBTC', 'Bitcoin', 'Crypto', '{btc,daily}', 'daily', '2026-01-01Z'),
  ('KXCPI', 'CPI', 'Economics', '{cpi}', 'monthly', '2026-01-01Z'),
  ('KXETH', 'Ether', 'Crypto', '{eth,daily}', 'daily', '2026-01-01Z');
INSERT INTO events (event_ticker, series_ticker, title, category, strike_date, updated_at) VALUES
  ('KXBTC-26JAN05', 'KXBTC', 'BTC Jan 5', 'Crypto', '2026-01-05T22:00Z', '2026-01-01Z'),
  ('KXBTC-26JAN06', 'KXBTC', 'BTC Jan 6', 'Crypto', '2026-01-06T22:00Z', '2026-01-01Z'),
  ('KXCPI-26JAN', 'KXCPI', 'CPI Jan', 'Economics', '2026-02-12T13:30Z', '2026-01-01Z'),
  ('KXETH-26JAN05', 'KXETH', 'ETH Jan 5', 'Crypto', '2026-01-05T22:00Z', '2026-01-01Z');
INSERT INTO markets (ticker, event_ticker, series_ticker, status, open_time, close_time, floor_strike, updated_at) VALUES
  ('KXBTC-26JAN05-T100000', 'KXBTC-26JAN05', 'KXBTC', 8, '2026-01-04T22:00Z', '2026-01-05T22:00Z', 100000, '2026-01-01Z'),
  ('KXBTC-26JAN05-T99999.99', 'KXBTC-26JAN05', 'KXBTC', 8, '2026-01-04T22:00Z', '2026-01-05T22:00Z', 99999.99, '2026-01-01Z'),
  ('KXBTC-26JAN06-T100000', 'KXBTC-26JAN06', 'KXBTC', 3, '2026-01-05T22:00Z', '2026-01-06T22:00Z', 100000, '2026-01-01Z'),
  ('KXCPI-26JAN-T0.3', 'KXCPI-26JAN', 'KXCPI', 4, '2026-01-15T00:00Z', '2026-02-12T13:00Z', 0.3, '2026-01-01Z'),
  ('KXETH-26JAN05-T3500', 'KXETH-26JAN05', 'KXETH', 8, '2026-01-04T22:00Z', '2026-01-05T22:00Z', 3500, '2026-01-01Z');
INSERT INTO settlements (market_ticker, event_ticker, series_ticker, result, settlement_value_micros,
                         determined_time, settled_time, updated_at) VALUES
  ('KXBTC-26JAN05-T100000', 'KXBTC-26JAN05', 'KXBTC', 2, 0, '2026-01-05T22:05Z', '2026-01-05T23:00Z', '2026-01-06Z'),
  ('KXBTC-26JAN05-T99999.99', 'KXBTC-26JAN05', 'KXBTC', 1, 1000000, '2026-01-05T22:05Z', '2026-01-05T23:00Z', '2026-01-06Z'),
  ('KXETH-26JAN05-T3500', 'KXETH-26JAN05', 'KXETH', 4, 500000, '2026-01-05T22:05Z', '2026-01-06T01:00Z', '2026-01-06Z');
";

async fn fixture() -> (TestApp, Client) {
    let app = TestApp::start().await;
    app.db.client().await.batch_execute(FIXTURE).await.expect("fixture");
    let client = ReferenceServiceClient::new(app.channel().await);
    (app, client)
}

fn at(s: &str) -> Option<Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(s).expect("time");
    Some(Timestamp { seconds: t.timestamp(), nanos: 0 })
}

fn assert_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with(field), "message should name {field}: {}", status.message());
}

#[tokio::test]
async fn gets_return_the_row_or_not_found_naming_the_ticker() {
    let (_app, mut client) = fixture().await;
    let series = client.get_series(GetSeriesRequest { ticker: "KXBTC".into() }).await.expect("series");
    let series = series.into_inner().series.expect("set");
    assert_eq!(
        (series.title.as_str(), series.tags.as_slice()),
        ("Bitcoin", &["btc".to_owned(), "daily".to_owned()][..])
    );

    let market = client.get_market(GetMarketRequest { ticker: "KXBTC-26JAN05-T99999.99".into() }).await;
    let market = market.expect("market").into_inner().market.expect("set");
    assert_eq!(market.floor_strike, "99999.99", "strikes are exact decimals");
    assert_eq!(market.status(), MarketStatus::Finalized);
    assert_eq!(market.series_ticker, "KXBTC");

    let event = client.get_event(GetEventRequest { event_ticker: "KXBTC-26JAN05".into(), include_markets: true });
    let event = event.await.expect("event").into_inner();
    assert_eq!(event.event.expect("set").strike_date, at("2026-01-05T22:00:00Z"));
    let tickers: Vec<_> = event.markets.iter().map(|m| m.ticker.as_str()).collect();
    assert_eq!(tickers, ["KXBTC-26JAN05-T100000", "KXBTC-26JAN05-T99999.99"]);
    let bare = client.get_event(GetEventRequest { event_ticker: "KXBTC-26JAN05".into(), include_markets: false });
    assert!(bare.await.expect("event").into_inner().markets.is_empty());

    let settlement = client.get_settlement(GetSettlementRequest { market_ticker: "KXETH-26JAN05-T3500".into() });
    let settlement = settlement.await.expect("settlement").into_inner().settlement.expect("set");
    assert_eq!((settlement.result(), settlement.settlement_value_micros), (SettlementResult::Void, 500_000));
    assert_eq!(settlement.series_ticker, "KXETH");

    let missing = [
        client.get_series(GetSeriesRequest { ticker: "NOPE".into() }).await.expect_err("series"),
        client
            .get_event(GetEventRequest { event_ticker: "NOPE".into(), include_markets: true })
            .await
            .expect_err("event"),
        client.get_market(GetMarketRequest { ticker: "NOPE".into() }).await.expect_err("market"),
        client
            .get_settlement(GetSettlementRequest { market_ticker: "KXCPI-26JAN-T0.3".into() })
            .await
            .expect_err("open"),
    ];
    for status in missing {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains("NOPE") || status.message().contains("KXCPI-26JAN-T0.3"), "{status:?}");
    }
    assert_invalid(client.get_market(GetMarketRequest { ticker: String::new() }).await.expect_err("empty"), "ticker");
}

/// One row per table with a distinct value in every column, so that a column read into the wrong field shows.
const EVERY_COLUMN: &str = "
INSERT INTO series VALUES ('S', 's-title', 's-category', '{s-tag}', 's-frequency', 's-url', 's-fee', '2026-01-01T00:00:01Z');
INSERT INTO events VALUES ('S-E', 'S', 'e-title', 'e-sub', 'e-category', true, '2026-01-02T00:00:02Z', 'e-period',
                           '2026-01-01T00:00:03Z');
INSERT INTO markets (ticker, event_ticker, series_ticker, market_type, title, yes_sub_title, no_sub_title, status,
                     open_time, close_time, expected_expiration_time, latest_expiration_time,
                     settlement_timer_seconds, can_close_early, strike_type, floor_strike, cap_strike,
                     rules_primary, rules_secondary, updated_at)
  VALUES ('S-E-M', 'S-E', 'S', 2, 'm-title', 'm-yes', 'm-no', 6, '2026-01-01T00:00:04Z', '2026-01-01T00:00:05Z',
          '2026-01-01T00:00:06Z', '2026-01-01T00:00:07Z', 300, true, 'between', 1.5, 2.25, 'm-rules1', 'm-rules2',
          '2026-01-01T00:00:08Z');
INSERT INTO settlements (market_ticker, event_ticker, series_ticker, result, settlement_value_micros,
                         determined_time, settled_time, updated_at)
  VALUES ('S-E-M', 'S-E', 'S', 3, 250000, '2026-01-01T00:00:09Z', '2026-01-01T00:00:10Z', '2026-01-01T00:00:11Z');
";

#[tokio::test]
async fn every_column_lands_in_its_field() {
    let app = TestApp::start().await;
    app.db.client().await.batch_execute(EVERY_COLUMN).await.expect("rows");
    let mut client = ReferenceServiceClient::new(app.channel().await);
    let second = |s: i64| Some(Timestamp { seconds: at("2026-01-01T00:00:00Z").expect("t").seconds + s, nanos: 0 });

    let series = client.get_series(GetSeriesRequest { ticker: "S".into() }).await.expect("series");
    let expected = Series {
        ticker: "S".into(),
        title: "s-title".into(),
        category: "s-category".into(),
        tags: vec!["s-tag".into()],
        frequency: "s-frequency".into(),
        contract_url: "s-url".into(),
        fee_type: "s-fee".into(),
        updated_time: second(1),
    };
    assert_eq!(series.into_inner().series, Some(expected));

    let event = client.get_event(GetEventRequest { event_ticker: "S-E".into(), include_markets: true });
    let event = event.await.expect("event").into_inner();
    let expected = Event {
        event_ticker: "S-E".into(),
        series_ticker: "S".into(),
        title: "e-title".into(),
        sub_title: "e-sub".into(),
        category: "e-category".into(),
        mutually_exclusive: true,
        strike_date: at("2026-01-02T00:00:02Z"),
        strike_period: "e-period".into(),
        updated_time: second(3),
    };
    assert_eq!(event.event, Some(expected));

    let expected = Market {
        ticker: "S-E-M".into(),
        event_ticker: "S-E".into(),
        series_ticker: "S".into(),
        market_type: MarketType::Scalar as i32,
        title: "m-title".into(),
        yes_sub_title: "m-yes".into(),
        no_sub_title: "m-no".into(),
        status: MarketStatus::Disputed as i32,
        open_time: second(4),
        close_time: second(5),
        expected_expiration_time: second(6),
        latest_expiration_time: second(7),
        settlement_timer_seconds: 300,
        can_close_early: true,
        strike_type: "between".into(),
        floor_strike: "1.5".into(),
        cap_strike: "2.25".into(),
        rules_primary: "m-rules1".into(),
        rules_secondary: "m-rules2".into(),
        updated_time: second(8),
    };
    assert_eq!(event.markets, std::slice::from_ref(&expected), "the markets of GetEvent");
    let market = client.get_market(GetMarketRequest { ticker: "S-E-M".into() }).await.expect("market");
    assert_eq!(market.into_inner().market, Some(expected.clone()));
    let listed = client.list_markets(ListMarketsRequest::default()).await.expect("list").into_inner().markets;
    assert_eq!(listed, [expected]);

    let settlement = client.get_settlement(GetSettlementRequest { market_ticker: "S-E-M".into() });
    let expected = Settlement {
        market_ticker: "S-E-M".into(),
        event_ticker: "S-E".into(),
        series_ticker: "S".into(),
        result: SettlementResult::Scalar as i32,
        settlement_value_micros: 250_000,
        determined_time: second(9),
        settled_time: second(10),
        updated_time: second(11),
    };
    assert_eq!(settlement.await.expect("settlement").into_inner().settlement, Some(expected));
}

async fn series_tickers(client: &mut Client, request: ListSeriesRequest) -> Vec<String> {
    client.list_series(request).await.expect("list").into_inner().series.into_iter().map(|s| s.ticker).collect()
}

async fn event_tickers(client: &mut Client, request: ListEventsRequest) -> Vec<String> {
    let events = client.list_events(request).await.expect("list").into_inner().events;
    events.into_iter().map(|e| e.event_ticker).collect()
}

async fn market_tickers(client: &mut Client, request: ListMarketsRequest) -> Vec<String> {
    client.list_markets(request).await.expect("list").into_inner().markets.into_iter().map(|m| m.ticker).collect()
}

async fn settled_tickers(client: &mut Client, request: ListSettlementsRequest) -> Vec<String> {
    let settlements = client.list_settlements(request).await.expect("list").into_inner().settlements;
    settlements.into_iter().map(|s| s.market_ticker).collect()
}

#[tokio::test]
async fn each_filter_alone_and_combined() {
    let (_app, mut c) = fixture().await;
    assert_eq!(series_tickers(&mut c, ListSeriesRequest::default()).await, ["KXBTC", "KXCPI", "KXETH"]);
    let crypto = ListSeriesRequest { category: "Crypto".into(), ..Default::default() };
    assert_eq!(series_tickers(&mut c, crypto.clone()).await, ["KXBTC", "KXETH"]);
    assert_eq!(
        series_tickers(&mut c, ListSeriesRequest { tag: "daily".into(), ..Default::default() }).await,
        ["KXBTC", "KXETH"]
    );
    assert_eq!(series_tickers(&mut c, ListSeriesRequest { tag: "eth".into(), ..crypto }).await, ["KXETH"]);

    let all = event_tickers(&mut c, ListEventsRequest::default()).await;
    assert_eq!(all, ["KXBTC-26JAN05", "KXBTC-26JAN06", "KXCPI-26JAN", "KXETH-26JAN05"]);
    let btc = ListEventsRequest { series_ticker: "KXBTC".into(), ..Default::default() };
    assert_eq!(event_tickers(&mut c, btc.clone()).await, ["KXBTC-26JAN05", "KXBTC-26JAN06"]);
    let active = ListEventsRequest { status: MarketStatus::Active.into(), ..Default::default() };
    assert_eq!(event_tickers(&mut c, active).await, ["KXBTC-26JAN06"]);
    let crypto = ListEventsRequest { category: "Crypto".into(), ..Default::default() };
    assert_eq!(event_tickers(&mut c, crypto).await, ["KXBTC-26JAN05", "KXBTC-26JAN06", "KXETH-26JAN05"]);
    let jan5 = ListEventsRequest {
        strike_date_start: at("2026-01-05T00:00:00Z"),
        strike_date_end: at("2026-01-06T00:00:00Z"),
        ..Default::default()
    };
    assert_eq!(event_tickers(&mut c, jan5.clone()).await, ["KXBTC-26JAN05", "KXETH-26JAN05"]);
    let from = ListEventsRequest { strike_date_start: at("2026-01-06T22:00:00Z"), ..Default::default() };
    assert_eq!(event_tickers(&mut c, from).await, ["KXBTC-26JAN06", "KXCPI-26JAN"], "start is inclusive");
    let finalized_btc_jan5 = ListEventsRequest {
        status: MarketStatus::Finalized.into(),
        ..ListEventsRequest { series_ticker: "KXBTC".into(), ..jan5 }
    };
    assert_eq!(event_tickers(&mut c, finalized_btc_jan5).await, ["KXBTC-26JAN05"]);

    let by_event = ListMarketsRequest { event_ticker: "KXBTC-26JAN05".into(), ..Default::default() };
    assert_eq!(market_tickers(&mut c, by_event).await, ["KXBTC-26JAN05-T100000", "KXBTC-26JAN05-T99999.99"]);
    let by_series = ListMarketsRequest { series_ticker: "KXBTC".into(), ..Default::default() };
    assert_eq!(market_tickers(&mut c, by_series.clone()).await.len(), 3);
    let closed = ListMarketsRequest { status: MarketStatus::Closed.into(), ..Default::default() };
    assert_eq!(market_tickers(&mut c, closed).await, ["KXCPI-26JAN-T0.3"]);
    // open at some time in [Jan 6 00:00, Jan 6 01:00): opened before the end, closed at or after the start
    let window = ListMarketsRequest {
        window_start: at("2026-01-06T00:00:00Z"),
        window_end: at("2026-01-06T01:00:00Z"),
        ..Default::default()
    };
    assert_eq!(market_tickers(&mut c, window.clone()).await, ["KXBTC-26JAN06-T100000"]);
    let edge = ListMarketsRequest { window_start: at("2026-01-05T22:00:00Z"), ..Default::default() };
    assert_eq!(market_tickers(&mut c, edge).await.len(), 5, "close_time equal to the window start counts");
    let active_in_window = ListMarketsRequest { status: MarketStatus::Finalized.into(), ..window };
    assert!(market_tickers(&mut c, active_in_window).await.is_empty());
    let combined = ListMarketsRequest { status: MarketStatus::Finalized.into(), ..by_series };
    assert_eq!(market_tickers(&mut c, combined).await, ["KXBTC-26JAN05-T100000", "KXBTC-26JAN05-T99999.99"]);

    assert_eq!(settled_tickers(&mut c, ListSettlementsRequest::default()).await.len(), 3);
    let btc = ListSettlementsRequest { series_ticker: "KXBTC".into(), ..Default::default() };
    assert_eq!(settled_tickers(&mut c, btc.clone()).await.len(), 2);
    let by_event = ListSettlementsRequest { event_ticker: "KXETH-26JAN05".into(), ..Default::default() };
    assert_eq!(settled_tickers(&mut c, by_event).await, ["KXETH-26JAN05-T3500"]);
    let yes = ListSettlementsRequest { result: SettlementResult::Yes.into(), ..btc };
    assert_eq!(settled_tickers(&mut c, yes).await, ["KXBTC-26JAN05-T99999.99"]);
    let late = ListSettlementsRequest { settled_start: at("2026-01-06T00:00:00Z"), ..Default::default() };
    assert_eq!(settled_tickers(&mut c, late).await, ["KXETH-26JAN05-T3500"]);
    let early = ListSettlementsRequest { settled_end: at("2026-01-06T00:00:00Z"), ..Default::default() };
    assert_eq!(settled_tickers(&mut c, early).await.len(), 2);
}

#[tokio::test]
async fn every_invalid_argument_names_its_field() {
    let (_app, mut c) = fixture().await;
    for size in [-1, 1001] {
        let status =
            c.list_series(ListSeriesRequest { page_size: size, ..Default::default() }).await.expect_err("size");
        assert_invalid(status, "page_size");
    }
    let unknown = ListMarketsRequest { status: 99, ..Default::default() };
    let status = c.list_markets(unknown).await.expect_err("unknown status");
    assert_invalid(status.clone(), "status");
    assert!(status.message().contains("MARKET_STATUS_ACTIVE") || status.message().contains("ACTIVE"), "{status:?}");
    let unknown = ListEventsRequest { status: -3, ..Default::default() };
    assert_invalid(c.list_events(unknown).await.expect_err("unknown status"), "status");
    let unknown = ListSettlementsRequest { result: 7, ..Default::default() };
    assert_invalid(c.list_settlements(unknown).await.expect_err("unknown result"), "result");

    let inverted = ListMarketsRequest {
        window_start: at("2026-01-06T00:00:00Z"),
        window_end: at("2026-01-05T00:00:00Z"),
        ..Default::default()
    };
    assert_invalid(c.list_markets(inverted).await.expect_err("inverted"), "window_end");
    let empty = ListEventsRequest {
        strike_date_start: at("2026-01-06T00:00:00Z"),
        strike_date_end: at("2026-01-06T00:00:00Z"),
        ..Default::default()
    };
    assert_invalid(c.list_events(empty).await.expect_err("empty range"), "strike_date_end");
    let inverted = ListSettlementsRequest {
        settled_start: at("2026-01-07T00:00:00Z"),
        settled_end: at("2026-01-06T00:00:00Z"),
        ..Default::default()
    };
    assert_invalid(c.list_settlements(inverted).await.expect_err("inverted"), "settled_end");
    let nanos =
        ListSettlementsRequest { settled_start: Some(Timestamp { seconds: 0, nanos: 1 }), ..Default::default() };
    assert_invalid(c.list_settlements(nanos).await.expect_err("sub-microsecond"), "settled_start");

    // tokens: damaged, altered by one byte, or from other filters
    let first = c.list_markets(ListMarketsRequest { page_size: 2, ..Default::default() }).await.expect("page");
    let token = first.into_inner().next_page_token;
    assert!(!token.is_empty());
    let damaged = ListMarketsRequest { page_size: 2, page_token: "garbage".into(), ..Default::default() };
    assert_invalid(c.list_markets(damaged).await.expect_err("damaged"), "page_token");
    let mut altered = token.clone().into_bytes();
    altered[5] = if altered[5] == b'A' { b'B' } else { b'A' };
    let altered = ListMarketsRequest { page_token: String::from_utf8(altered).expect("ascii"), ..Default::default() };
    assert_invalid(c.list_markets(altered).await.expect_err("altered"), "page_token");
    let other_filters =
        ListMarketsRequest { series_ticker: "KXBTC".into(), page_token: token.clone(), ..Default::default() };
    assert_invalid(c.list_markets(other_filters).await.expect_err("other filters"), "page_token");
    let other_rpc = ListSeriesRequest { page_token: token.clone(), ..Default::default() };
    assert_invalid(c.list_series(other_rpc).await.expect_err("other rpc"), "page_token");
    // the page size may change between pages
    let bigger = ListMarketsRequest { page_size: 10, page_token: token, ..Default::default() };
    assert_eq!(c.list_markets(bigger).await.expect("next page").into_inner().markets.len(), 3);
}

/// Walks every page of ListMarkets with `page_size` and returns the tickers in order.
async fn walk_markets(client: &mut Client, page_size: i32) -> Vec<String> {
    let mut tickers = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListMarketsRequest { page_size, page_token: token, ..Default::default() };
        let page = client.list_markets(request).await.expect("page").into_inner();
        assert!(page.markets.len() <= page_size as usize);
        tickers.extend(page.markets.into_iter().map(|m| m.ticker));
        if page.next_page_token.is_empty() {
            return tickers;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_paged_walk_under_concurrent_inserts_sees_every_row_once() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    db.execute(
        "INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at)
         SELECT format('M%s', lpad((i * 2)::text, 5, '0')), 'E', 'S', 3, now() FROM generate_series(1, 400) i",
        &[],
    )
    .await
    .expect("initial markets");
    let before: BTreeSet<String> =
        db.query("SELECT ticker FROM markets", &[]).await.expect("select").iter().map(|r| r.get(0)).collect();

    // odd tickers land between the even ones, before and after the cursor, while the walk runs
    let writer = {
        let db = app.db.client().await;
        tokio::spawn(async move {
            for i in 0..400 {
                let ticker = format!("M{:05}", i * 2 + 1);
                db.execute(
                    "INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at)
                     VALUES ($1, 'E', 'S', 3, now())",
                    &[&ticker],
                )
                .await
                .expect("concurrent insert");
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut client = ReferenceServiceClient::new(app.channel().await);
    let walked = walk_markets(&mut client, 7).await;
    writer.await.expect("writer");

    let unique: BTreeSet<String> = walked.iter().cloned().collect();
    assert_eq!(unique.len(), walked.len(), "no ticker twice");
    assert!(walked.windows(2).all(|w| w[0] < w[1]), "strictly ascending");
    assert!(before.is_subset(&unique), "every row that existed throughout was seen");

    // and a quiet walk returns exactly the table
    let all = walk_markets(&mut client, 1000).await;
    assert_eq!(all.len(), 800);
    assert_eq!(walk_markets(&mut client, 13).await, all);
}

#[tokio::test]
async fn the_hierarchy_round_trips_on_generated_data() {
    let app = TestApp::start().await;
    let spec = DatasetSpec {
        seed: 11,
        markets: 40,
        days: 3,
        trades: 2_000,
        start: NaiveDate::from_ymd_opt(2026, 3, 1).expect("date"),
    };
    generate(&mut app.db.client().await, &spec).await.expect("generate");
    let mut c = ReferenceServiceClient::new(app.channel().await);

    let (mut markets_seen, mut settlements_seen) = (0, 0);
    let series = c.list_series(ListSeriesRequest::default()).await.expect("series").into_inner().series;
    assert!(!series.is_empty());
    for s in &series {
        let events = ListEventsRequest { series_ticker: s.ticker.clone(), page_size: 1000, ..Default::default() };
        let events = c.list_events(events).await.expect("events").into_inner().events;
        assert!(!events.is_empty(), "series {} has events", s.ticker);
        for e in events {
            assert_eq!(e.series_ticker, s.ticker);
            let with_markets = GetEventRequest { event_ticker: e.event_ticker.clone(), include_markets: true };
            let got = c.get_event(with_markets).await.expect("event").into_inner();
            assert_eq!(got.event.as_ref(), Some(&e));
            let listed =
                ListMarketsRequest { event_ticker: e.event_ticker.clone(), page_size: 1000, ..Default::default() };
            let listed = c.list_markets(listed).await.expect("markets").into_inner().markets;
            assert_eq!(got.markets, listed);
            for m in &listed {
                assert_eq!(
                    (m.event_ticker.as_str(), m.series_ticker.as_str()),
                    (e.event_ticker.as_str(), s.ticker.as_str())
                );
                let single = c.get_market(GetMarketRequest { ticker: m.ticker.clone() }).await.expect("market");
                assert_eq!(single.into_inner().market.as_ref(), Some(m));
            }
            let settled =
                ListSettlementsRequest { event_ticker: e.event_ticker.clone(), page_size: 1000, ..Default::default() };
            let settled = c.list_settlements(settled).await.expect("settlements").into_inner().settlements;
            let finalized: Vec<&str> =
                listed.iter().filter(|m| m.status() == MarketStatus::Finalized).map(|m| m.ticker.as_str()).collect();
            let settled_tickers: Vec<&str> = settled.iter().map(|s| s.market_ticker.as_str()).collect();
            assert_eq!(settled_tickers, finalized, "exactly the finalized markets settled");
            markets_seen += listed.len();
            settlements_seen += settled.len();
        }
    }
    assert_eq!(markets_seen, 40);
    let all_settled = walk_settlements(&mut c).await;
    assert_eq!(all_settled, settlements_seen);
}

async fn walk_settlements(client: &mut Client) -> usize {
    let (mut count, mut token) = (0, String::new());
    loop {
        let request = ListSettlementsRequest { page_size: 3, page_token: token, ..Default::default() };
        let page = client.list_settlements(request).await.expect("page").into_inner();
        count += page.settlements.len();
        if page.next_page_token.is_empty() {
            return count;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn get_coverage_over_grpc_reports_days_counts_and_gaps() {
    use kalshi_replay::proto::GetCoverageRequest;
    let (app, mut c) = fixture().await;
    let db = app.db.client().await;
    kalshi_replay::store::partitions::ensure_range(
        &db,
        chrono::DateTime::parse_from_rfc3339("2026-01-04T00:00:00Z").expect("t").to_utc(),
        chrono::DateTime::parse_from_rfc3339("2026-01-08T00:00:00Z").expect("t").to_utc(),
    )
    .await
    .expect("partitions");
    db.batch_execute(
        "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side) VALUES
           ('2026-01-04T23:00:00Z', 'KXBTC-26JAN05-T100000', 'a', 400000, 100, 1),
           ('2026-01-05T01:00:00Z', 'KXBTC-26JAN05-T100000', 'b', 410000, 250, 2),
           ('2026-01-05T21:59:59.999999Z', 'KXBTC-26JAN05-T100000', 'c', 990000, 100, 1),
           ('2026-01-07T10:00:00Z', 'KXBTC-26JAN05-T100000', 'd', 990000, 100, 1)",
    )
    .await
    .expect("trades");

    let request = GetCoverageRequest {
        market_tickers: vec!["KXBTC-26JAN05-T100000".into(), "KXETH-26JAN05-T3500".into()],
        start_time: at("2026-01-04T00:00:00Z"),
        end_time: at("2026-01-08T00:00:00Z"),
    };
    let markets = c.get_coverage(request).await.expect("coverage").into_inner().markets;
    assert_eq!(markets.len(), 2, "one entry per requested market, in request order");
    let btc = &markets[0];
    assert_eq!(btc.market_ticker, "KXBTC-26JAN05-T100000");
    assert_eq!(btc.trade_count, 4);
    assert_eq!(btc.first_trade_time, at("2026-01-04T23:00:00Z"));
    assert_eq!(btc.last_trade_time, at("2026-01-07T10:00:00Z"));
    let days: Vec<_> = btc.days.iter().map(|d| (d.day_start, d.trade_count)).collect();
    assert_eq!(
        days,
        [(at("2026-01-04T00:00:00Z"), 1), (at("2026-01-05T00:00:00Z"), 2), (at("2026-01-07T00:00:00Z"), 1)]
    );
    let gaps: Vec<_> = btc.gaps.iter().map(|g| (g.gap_start, g.gap_end)).collect();
    assert_eq!(gaps, [(at("2026-01-06T00:00:00Z"), at("2026-01-07T00:00:00Z"))]);
    let eth = &markets[1];
    assert_eq!((eth.trade_count, eth.days.len(), eth.first_trade_time.is_none()), (0, 0, true));
    assert_eq!(eth.gaps.len(), 1, "no data at all: the whole range is one gap");

    let unknown = GetCoverageRequest {
        market_tickers: vec!["KXBTC-26JAN05-T100000".into(), "NOPE-1".into(), "NOPE-2".into()],
        ..Default::default()
    };
    let status = c.get_coverage(unknown).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("NOPE-1") && status.message().contains("NOPE-2"), "{status:?}");
    let none = GetCoverageRequest::default();
    assert_invalid(c.get_coverage(none).await.expect_err("no tickers"), "market_tickers");
    let inverted = GetCoverageRequest {
        market_tickers: vec!["KXBTC-26JAN05-T100000".into()],
        start_time: at("2026-01-08T00:00:00Z"),
        end_time: at("2026-01-04T00:00:00Z"),
    };
    assert_invalid(c.get_coverage(inverted).await.expect_err("inverted"), "end_time");
}

/// The backend of the server's reference cache listener, once it listens.
async fn listener_pid(admin: &tokio_postgres::Client, database: &str) -> i32 {
    let started = std::time::Instant::now();
    loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2
                    AND query LIKE '%LISTEN%' AND state = 'idle'",
                &[&database, &kalshi_replay::reference::cache::LISTENER_NAME],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the cache listener never listened");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Calls `get` until `done` holds for its answer; fails when it does not within two seconds.
async fn eventually<T: std::fmt::Debug, F: Future<Output = T>>(mut get: impl FnMut() -> F, done: impl Fn(&T) -> bool) {
    let started = std::time::Instant::now();
    loop {
        let answer = get().await;
        if done(&answer) {
            return;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "still {answer:?} after two seconds");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn market_title(client: &Client, ticker: &str) -> Result<String, Code> {
    let answer = client.clone().get_market(GetMarketRequest { ticker: ticker.into() }).await;
    answer.map(|r| r.into_inner().market.expect("set").title).map_err(|s| s.code())
}

#[tokio::test]
async fn lookups_by_key_are_cached_and_follow_every_committed_change() {
    let (app, client) = fixture().await;
    let db = app.db.client().await;
    listener_pid(&app.db.admin().await, &app.db.name).await;
    let market = "KXBTC-26JAN05-T100000";
    let event = || {
        let mut client = client.clone();
        async move {
            let request = GetEventRequest { event_ticker: "KXBTC-26JAN05".into(), include_markets: true };
            let event = client.get_event(request).await.expect("event").into_inner();
            (event.event.expect("set").title, event.markets.iter().map(|m| m.title.clone()).collect::<Vec<_>>())
        }
    };
    let series = || {
        let mut client = client.clone();
        async move { client.get_series(GetSeriesRequest { ticker: "KXBTC".into() }).await.map(|r| r.into_inner()) }
    };
    let settlement = || {
        let mut client = client.clone();
        async move {
            let request = GetSettlementRequest { market_ticker: market.into() };
            client.get_settlement(request).await.expect("settlement").into_inner().settlement.expect("set")
        }
    };
    assert_eq!(market_title(&client, market).await, Ok(String::new()));
    // a page with the cache on: one market cached by the Get above, the other read and cached now; both exactly
    // the rows a Get returns
    let list = || {
        let mut client = client.clone();
        async move {
            let request = ListMarketsRequest { event_ticker: "KXBTC-26JAN05".into(), ..Default::default() };
            client.list_markets(request).await.expect("list").into_inner().markets
        }
    };
    let page = list().await;
    assert_eq!(page.len(), 2);
    for listed in &page {
        let got = client.clone().get_market(GetMarketRequest { ticker: listed.ticker.clone() }).await.expect("get");
        assert_eq!(Some(listed), got.into_inner().market.as_ref());
    }
    assert_eq!(list().await, page, "the same page again, now all from the cache");
    let (first_event, _) = event().await;
    series().await.expect("series");
    settlement().await;

    // served from the cache: the database could not answer while another transaction locks the tables
    let locker = app.db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE series, events, markets, settlements IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let cached = async {
        assert_eq!(market_title(&client, market).await, Ok(String::new()));
        assert_eq!(event().await.0, first_event);
        series().await.expect("series");
        settlement().await;
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), cached).await.expect("cached lookups need no database");
    let mut uncached = tonic::Request::new(GetMarketRequest { ticker: "KXETH-26JAN05-T3500".into() });
    uncached.set_timeout(std::time::Duration::from_millis(300));
    let status = client.clone().get_market(uncached).await.expect_err("the lock holds the database");
    // the client's own timer may fire first (CANCELLED) or the server's (DEADLINE_EXCEEDED)
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    // a rolled-back change is never seen; committed changes of every table are, by every lookup they touch
    db.batch_execute("BEGIN; UPDATE markets SET title = 'rolled back'; ROLLBACK").await.expect("rollback");
    db.batch_execute(&format!(
        "UPDATE markets SET title = 'changed' WHERE ticker = '{market}';
         UPDATE series SET title = 'Bitcoin, changed' WHERE ticker = 'KXBTC';
         UPDATE settlements SET settlement_value_micros = 1 WHERE market_ticker = '{market}';"
    ))
    .await
    .expect("update");
    eventually(|| market_title(&client, market), |t| t.as_deref() == Ok("changed")).await;
    eventually(list, |page| page.iter().any(|m| m.title == "changed")).await;
    eventually(event, |(_, markets)| markets.contains(&"changed".to_owned())).await;
    eventually(series, |s| s.as_ref().is_ok_and(|s| s.series.as_ref().expect("set").title == "Bitcoin, changed")).await;
    eventually(settlement, |s| s.settlement_value_micros == 1).await;
    db.batch_execute(&format!("DELETE FROM markets WHERE ticker = '{market}'")).await.expect("delete");
    eventually(|| market_title(&client, market), |t| *t == Err(Code::NotFound)).await;
    eventually(list, |page| page.len() == 1).await;
    db.batch_execute("TRUNCATE series").await.expect("truncate");
    eventually(series, |s| s.as_ref().is_err_and(|s| s.code() == Code::NotFound)).await;
}

#[tokio::test]
async fn a_lost_listener_turns_the_cache_off_until_it_listens_again() {
    let (app, client) = fixture().await;
    let db = app.db.client().await;
    let admin = app.db.admin().await;
    let market = "KXETH-26JAN05-T3500";
    let first = listener_pid(&admin, &app.db.name).await;
    assert_eq!(market_title(&client, market).await, Ok(String::new()));

    // the listener's connection dies: a change made before it listens again is seen all the same
    admin.query_one("SELECT pg_terminate_backend($1)", &[&first]).await.expect("terminate");
    db.batch_execute(&format!("UPDATE markets SET title = 'while deaf' WHERE ticker = '{market}'"))
        .await
        .expect("update");
    eventually(|| market_title(&client, market), |t| t.as_deref() == Ok("while deaf")).await;

    // it listens again on a new connection, and the cache follows changes as before
    let second = listener_pid(&admin, &app.db.name).await;
    assert_ne!(first, second);
    assert_eq!(market_title(&client, market).await, Ok("while deaf".to_owned()));
    db.batch_execute(&format!("UPDATE markets SET title = 'heard' WHERE ticker = '{market}'")).await.expect("update");
    eventually(|| market_title(&client, market), |t| t.as_deref() == Ok("heard")).await;
}

/// GetCoverage of `tickers` over [start, end), through the server.
async fn coverage_over_grpc(
    client: &Client,
    tickers: &[&str],
    start: Option<&str>,
    end: Option<&str>,
) -> Result<Vec<kalshi_replay::proto::MarketCoverage>, Code> {
    let request = kalshi_replay::proto::GetCoverageRequest {
        market_tickers: tickers.iter().map(|t| (*t).to_owned()).collect(),
        start_time: start.and_then(at),
        end_time: end.and_then(at),
    };
    client.clone().get_coverage(request).await.map(|r| r.into_inner().markets).map_err(|s| s.code())
}

#[tokio::test]
async fn coverage_is_cached_cut_to_any_range_and_follows_every_committed_write() {
    let (app, client) = fixture().await;
    let db = app.db.client().await;
    listener_pid(&app.db.admin().await, &app.db.name).await;
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).expect("time").to_utc();
    kalshi_replay::store::partitions::ensure_range(&db, parse("2026-01-01T00:00:00Z"), parse("2026-01-10T00:00:00Z"))
        .await
        .expect("partitions");
    db.batch_execute(
        "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side) VALUES
           ('2026-01-02T23:00:00Z', 'KXBTC-26JAN05-T100000', 'a', 400000, 100, 1),
           ('2026-01-04T01:00:00Z', 'KXBTC-26JAN05-T100000', 'b', 410000, 250, 2),
           ('2026-01-04T21:59:59.999999Z', 'KXBTC-26JAN05-T100000', 'c', 990000, 100, 1),
           ('2026-01-07T10:00:00Z', 'KXBTC-26JAN05-T100000', 'd', 990000, 100, 1),
           ('2026-01-05T10:00:00Z', 'KXBTC-26JAN05-T99999.99', 'e', 10000, 100, 2)",
    )
    .await
    .expect("trades");
    let cached: [&str; 3] = ["KXBTC-26JAN05-T100000", "KXBTC-26JAN05-T99999.99", "KXETH-26JAN05-T3500"];
    let ranges = [
        (None, None),
        (Some("2026-01-01T00:00:00Z"), Some("2026-01-10T00:00:00Z")),
        (Some("2026-01-03T12:00:00Z"), Some("2026-01-05T00:00:00Z")),
        (Some("2026-01-05T00:00:00Z"), None),
        (None, Some("2026-01-04T00:00:00Z")),
        (Some("2026-01-08T00:00:00Z"), Some("2026-01-09T00:00:00Z")),
    ];
    // the database's own answer for a range, read past the cache
    let expected = |tickers: &[&str], start: Option<&str>, end: Option<&str>| {
        let tickers: Vec<String> = tickers.iter().map(|t| (*t).to_owned()).collect();
        let (start, end) = (start.map(parse), end.map(parse));
        let db = &db;
        async move { kalshi_replay::reference::coverage::coverage(db, &tickers, start, end).await.expect("coverage") }
    };
    // the first call fills the cache with all the markets' days; every range is then cut from it exactly
    assert_eq!(coverage_over_grpc(&client, &cached, None, None).await, Ok(expected(&cached, None, None).await));
    let mut answers = Vec::new();
    for (start, end) in ranges {
        let answer = coverage_over_grpc(&client, &cached, start, end).await.expect("coverage");
        assert_eq!(answer, expected(&cached, start, end).await, "range {start:?}..{end:?}");
        answers.push(answer);
    }
    let (days, gaps) = (answers[2][0].days.len(), answers[2][0].gaps.len());
    assert_eq!((days, gaps), (1, 1), "of Jan 3 and 4, data on Jan 4 only");

    // served from the cache: the database could not answer while another transaction locks the tables
    let locker = app.db.client().await;
    locker.batch_execute("BEGIN; LOCK TABLE markets, coverage_daily IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let from_cache = async {
        for ((start, end), answer) in ranges.into_iter().zip(&answers) {
            assert_eq!(coverage_over_grpc(&client, &cached, start, end).await.as_ref(), Ok(answer));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), from_cache)
        .await
        .expect("cached coverage needs no database");
    let mut uncached = tonic::Request::new(kalshi_replay::proto::GetCoverageRequest {
        market_tickers: vec![cached[0].into(), "KXBTC-26JAN06-T100000".into()],
        ..Default::default()
    });
    uncached.set_timeout(std::time::Duration::from_millis(300));
    let status = client.clone().get_coverage(uncached).await.expect_err("the lock holds the database");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    // a market looked up by key stays cached through fact writes: they notify the coverage channel only
    assert_eq!(market_title(&client, cached[2]).await, Ok(String::new()));
    // a rolled-back write is never seen; a committed one is, by every range it touches
    db.batch_execute(
        "BEGIN; INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
                VALUES ('2026-01-06T10:00:00Z', 'KXETH-26JAN05-T3500', 'x', 500000, 100, 1); ROLLBACK",
    )
    .await
    .expect("rollback");
    db.batch_execute(
        "INSERT INTO orderbook_deltas (ts, ticker, sid, seq, side, price_micros, delta_centi)
           VALUES ('2026-01-06T10:00:00Z', 'KXETH-26JAN05-T3500', 1, 1, 1, 500000, 100)",
    )
    .await
    .expect("delta");
    let eth = &cached[2..];
    let window = (Some("2026-01-06T00:00:00Z"), Some("2026-01-07T00:00:00Z"));
    eventually(
        || coverage_over_grpc(&client, eth, window.0, window.1),
        |c| c.as_ref().is_ok_and(|c| c[0].delta_count == 1),
    )
    .await;
    for (start, end) in ranges {
        assert_eq!(coverage_over_grpc(&client, &cached, start, end).await, Ok(expected(&cached, start, end).await));
    }
    locker.batch_execute("BEGIN; LOCK TABLE markets IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let by_key = tokio::time::timeout(std::time::Duration::from_secs(2), market_title(&client, cached[2])).await;
    assert_eq!(by_key.expect("the lookup by key was still cached"), Ok(String::new()));
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    // a deleted market is NOT_FOUND, although its coverage was cached
    let idle = "KXBTC-26JAN06-T100000";
    let idle_only = [idle];
    assert_eq!(coverage_over_grpc(&client, &idle_only, None, None).await.map(|c| c[0].days.len()), Ok(0));
    db.batch_execute(&format!("DELETE FROM markets WHERE ticker = '{idle}'")).await.expect("delete");
    eventually(|| coverage_over_grpc(&client, &idle_only, None, None), |c| *c == Err(Code::NotFound)).await;
}
