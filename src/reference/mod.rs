//! ReferenceService: lookups of the series -> event -> market hierarchy, settlements and coverage.
//!
//! List RPCs page by keyset on their unique ticker (`WHERE key > last ORDER BY key LIMIT n + 1`), so a walk sees
//! every row that existed throughout exactly once, whatever is inserted meanwhile, and no page costs more than
//! the first. The SQL of a list is built from the filters that are set, so the planner sees plain predicates.

pub mod cache;
pub mod coverage;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use tokio_postgres::{
    Row,
    types::{FromSql, ToSql, Type},
};
use tonic::{Request, Response, Status};

use crate::{
    error::Error,
    proto::{
        Event, GetCoverageRequest, GetCoverageResponse, GetEventRequest, GetEventResponse, GetMarketRequest,
        GetMarketResponse, GetSeriesRequest, GetSeriesResponse, GetSettlementRequest, GetSettlementResponse,
        ListEventsRequest, ListEventsResponse, ListMarketsRequest, ListMarketsResponse, ListSeriesRequest,
        ListSeriesResponse, ListSettlementsRequest, ListSettlementsResponse, Market, MarketStatus, Series, Settlement,
        SettlementResult, reference_service_server::ReferenceService,
    },
    reference::cache::ReferenceCache,
    store::db::{Conn, Pool, Prepare},
    time,
    token::{self, Kind},
};

/// Page size when the request leaves it at 0, and the largest allowed.
const DEFAULT_PAGE_SIZE: i32 = 100;
const MAX_PAGE_SIZE: i32 = 1000;

const SERIES_COLUMNS: &str = "ticker, title, category, tags, frequency, contract_url, fee_type, updated_at";
const EVENT_COLUMNS: &str = "event_ticker, series_ticker, title, sub_title, category, mutually_exclusive, \
                             strike_date, strike_period, updated_at";
const MARKET_COLUMNS: &str = "ticker, event_ticker, series_ticker, market_type, title, yes_sub_title, \
                              no_sub_title, status, open_time, close_time, expected_expiration_time, \
                              latest_expiration_time, settlement_timer_seconds, can_close_early, strike_type, \
                              floor_strike, cap_strike, rules_primary, rules_secondary, updated_at";
const SETTLEMENT_COLUMNS: &str = "market_ticker, event_ticker, series_ticker, result, settlement_value_micros, \
                                  determined_time, settled_time, updated_at";

/// Maps a row to its message; a column of an unexpected type is an error, not a panic.
type RowMap<T> = fn(&Row) -> Result<T, tokio_postgres::Error>;

/// ReferenceService over the pool.
#[derive(Debug, Clone)]
pub struct ReferenceApi {
    pool: Pool,
    /// Lookups by key; served only while its listener listens (see [`crate::reference::cache`]).
    cache: ReferenceCache,
    /// Signs and checks the page tokens; the database's key, read once at start.
    tokens: token::TokenKey,
}

impl ReferenceApi {
    /// A service reading from `pool`, keeping lookups by key in `cache`, its page tokens signed with `tokens`.
    pub fn new(pool: Pool, cache: ReferenceCache, tokens: token::TokenKey) -> Self {
        Self { pool, cache, tokens }
    }

    /// Runs one query and maps its rows.
    async fn rows<T>(&self, query: &Query, map: RowMap<T>) -> Result<Vec<T>, Error> {
        let conn = self.pool.get().await?;
        let rows = query.run(&conn).await?;
        Ok(rows.iter().map(map).collect::<Result<_, _>>()?)
    }

    /// One page of a list: `query` completed by `page`, keyed by the unique `key_column` whose value `key` reads
    /// off a message.
    async fn page<T>(
        &self,
        page: Page,
        query: Query,
        key_column: &str,
        map: RowMap<T>,
        key: fn(&T) -> &[u8],
    ) -> Result<(Vec<T>, String), Error> {
        let rows = self.rows(&page.finish(query, key_column), map).await?;
        Ok(page.split(rows, key))
    }

    /// The one row of a Get, or NOT_FOUND naming the ticker.
    async fn one<T>(&self, query: Query, ticker: &str, kind: &'static str, map: RowMap<T>) -> Result<T, Error> {
        let conn = self.pool.get().await?;
        first(query.run(&conn).await?, ticker, kind, map)
    }

    /// The markets of `tickers`, in that order: from the cache, and those it lacks in one query (and then cached).
    /// A market deleted since its ticker was read is left out, as a page read a moment later would.
    async fn markets_by_ticker(&self, tickers: Vec<String>) -> Result<Vec<Market>, Error> {
        let cached = self.cache.markets();
        let mut markets: Vec<Option<Market>> = tickers.iter().map(|t| cached.get(t)).collect();
        let missing: Vec<String> =
            tickers.iter().zip(&markets).filter(|(_, m)| m.is_none()).map(|(t, _)| t.clone()).collect();
        if !missing.is_empty() {
            let ticket = self.cache.ticket();
            let mut query = Query::new(format!("SELECT {MARKET_COLUMNS} FROM markets"));
            query.filter("ticker = ANY({})", missing, Type::TEXT_ARRAY);
            let mut found: HashMap<String, Market> =
                self.rows(&query, market_from_row).await?.into_iter().map(|m| (m.ticker.clone(), m)).collect();
            for (ticker, market) in tickers.iter().zip(&mut markets) {
                if market.is_none()
                    && let Some(row) = found.remove(ticker)
                {
                    cached.put(ticket, ticker.clone(), row.clone());
                    *market = Some(row);
                }
            }
        }
        Ok(markets.into_iter().flatten().collect())
    }
}

/// The first row of `rows` mapped, or NOT_FOUND naming `ticker`.
fn first<T>(rows: Vec<Row>, ticker: &str, kind: &'static str, map: RowMap<T>) -> Result<T, Error> {
    match rows.first() {
        Some(row) => Ok(map(row)?),
        None => Err(Error::NotFound { kind, names: vec![ticker.to_owned()] }),
    }
}

/// The query of a Get: `select` filtered on `column = ticker`; INVALID_ARGUMENT naming `field` for an empty ticker.
fn by_ticker(select: String, column: &str, ticker: &str, field: &str) -> Result<Query, Error> {
    if ticker.is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    let mut query = Query::new(select);
    query.filter(&format!("{column} = {{}}"), ticker.to_owned(), Type::TEXT);
    Ok(query)
}

#[tonic::async_trait]
impl ReferenceService for ReferenceApi {
    #[tracing::instrument(skip_all, fields(ticker = %request.get_ref().ticker))]
    async fn get_series(&self, request: Request<GetSeriesRequest>) -> Result<Response<GetSeriesResponse>, Status> {
        // a cached answer is served without building the query; NOT_FOUND (and any error) is never cached
        let ticker = &request.get_ref().ticker;
        let series = self
            .cache
            .series()
            .through(ticker.clone(), async {
                let query = by_ticker(format!("SELECT {SERIES_COLUMNS} FROM series"), "ticker", ticker, "ticker")?;
                self.one(query, ticker, "series ticker", series_from_row).await
            })
            .await?;
        Ok(Response::new(GetSeriesResponse { series: Some(series) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_series(&self, request: Request<ListSeriesRequest>) -> Result<Response<ListSeriesResponse>, Status> {
        let req = request.into_inner();
        let page = Page::of(&req, Kind::Series, &self.tokens, |r| (&mut r.page_size, &mut r.page_token))?;
        let mut query = Query::new(format!("SELECT {SERIES_COLUMNS} FROM series"));
        if !req.category.is_empty() {
            query.filter("category = {}", req.category.clone(), Type::TEXT);
        }
        if !req.tag.is_empty() {
            query.filter("{} = ANY(tags)", req.tag.clone(), Type::TEXT);
        }
        let (series, next_page_token) =
            self.page(page, query, "ticker", series_from_row, |s| s.ticker.as_bytes()).await?;
        Ok(Response::new(ListSeriesResponse { series, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(event_ticker = %request.get_ref().event_ticker))]
    async fn get_event(&self, request: Request<GetEventRequest>) -> Result<Response<GetEventResponse>, Status> {
        let req = request.into_inner();
        let ticker = &req.event_ticker;
        let response = self
            .cache
            .events()
            .through((ticker.clone(), req.include_markets), async {
                let event_query =
                    by_ticker(format!("SELECT {EVENT_COLUMNS} FROM events"), "event_ticker", ticker, "event_ticker")?;
                let conn = self.pool.get().await.map_err(Error::from)?;
                // the event and its markets in one round trip: both statements are sent before either answer is read
                let markets_query = async {
                    if !req.include_markets {
                        return Ok(Vec::new());
                    }
                    let mut query = Query::new(format!("SELECT {MARKET_COLUMNS} FROM markets"));
                    query.filter("event_ticker = {}", ticker.clone(), Type::TEXT);
                    query.sql.push_str(" ORDER BY ticker");
                    query.run(&conn).await
                };
                let (event_rows, market_rows) =
                    conn.reads(async { tokio::try_join!(event_query.run(&conn), markets_query) }).await?;
                let event = first(event_rows, ticker, "event ticker", event_from_row)?;
                let markets = market_rows.iter().map(market_from_row).collect::<Result<_, _>>().map_err(Error::from)?;
                Ok::<_, Error>(GetEventResponse { event: Some(event), markets })
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn list_events(&self, request: Request<ListEventsRequest>) -> Result<Response<ListEventsResponse>, Status> {
        let req = request.into_inner();
        let page = Page::of(&req, Kind::Events, &self.tokens, |r| (&mut r.page_size, &mut r.page_token))?;
        let status = market_status(req.status, "status")?;
        let (start, end) = time::optional_range(
            req.strike_date_start.as_ref(),
            req.strike_date_end.as_ref(),
            "strike_date_start",
            "strike_date_end",
        )?;
        let mut query = Query::new(format!("SELECT {EVENT_COLUMNS} FROM events e"));
        if !req.series_ticker.is_empty() {
            query.filter("series_ticker = {}", req.series_ticker.clone(), Type::TEXT);
        }
        if let Some(status) = status {
            query.filter(
                "EXISTS (SELECT 1 FROM markets m WHERE m.event_ticker = e.event_ticker AND m.status = {})",
                status,
                Type::INT2,
            );
        }
        if !req.category.is_empty() {
            query.filter("category = {}", req.category.clone(), Type::TEXT);
        }
        if let Some(start) = start {
            query.filter("strike_date >= {}", start, Type::TIMESTAMPTZ);
        }
        if let Some(end) = end {
            query.filter("strike_date < {}", end, Type::TIMESTAMPTZ);
        }
        let (events, next_page_token) =
            self.page(page, query, "event_ticker", event_from_row, |e| e.event_ticker.as_bytes()).await?;
        Ok(Response::new(ListEventsResponse { events, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(ticker = %request.get_ref().ticker))]
    async fn get_market(&self, request: Request<GetMarketRequest>) -> Result<Response<GetMarketResponse>, Status> {
        let ticker = &request.get_ref().ticker;
        let market = self
            .cache
            .markets()
            .through(ticker.clone(), async {
                let query = by_ticker(format!("SELECT {MARKET_COLUMNS} FROM markets"), "ticker", ticker, "ticker")?;
                self.one(query, ticker, "market ticker", market_from_row).await
            })
            .await?;
        Ok(Response::new(GetMarketResponse { market: Some(market) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_markets(
        &self,
        request: Request<ListMarketsRequest>,
    ) -> Result<Response<ListMarketsResponse>, Status> {
        let req = request.into_inner();
        let page = Page::of(&req, Kind::Markets, &self.tokens, |r| (&mut r.page_size, &mut r.page_token))?;
        let status = market_status(req.status, "status")?;
        let (start, end) =
            time::optional_range(req.window_start.as_ref(), req.window_end.as_ref(), "window_start", "window_end")?;
        // with the cache on, the page's tickers are read (an index scan of one column) and its rows come from
        // the cache, so that the database sends only the rows it does not hold
        let cached = self.cache.ticket().is_some();
        let columns = if cached { "ticker" } else { MARKET_COLUMNS };
        let mut query = Query::new(format!("SELECT {columns} FROM markets"));
        if !req.event_ticker.is_empty() {
            query.filter("event_ticker = {}", req.event_ticker.clone(), Type::TEXT);
        }
        if !req.series_ticker.is_empty() {
            query.filter("series_ticker = {}", req.series_ticker.clone(), Type::TEXT);
        }
        if let Some(status) = status {
            query.filter("status = {}", status, Type::INT2);
        }
        // open at some time in the window: opened before it ends, closed at or after it starts
        if let Some(end) = end {
            query.filter("open_time < {}", end, Type::TIMESTAMPTZ);
        }
        if let Some(start) = start {
            query.filter("close_time >= {}", start, Type::TIMESTAMPTZ);
        }
        let (markets, next_page_token) = if cached {
            let (tickers, next_page_token) =
                self.page(page, query, "ticker", |row| row.try_get(0), |t: &String| t.as_bytes()).await?;
            (self.markets_by_ticker(tickers).await?, next_page_token)
        } else {
            self.page(page, query, "ticker", market_from_row, |m| m.ticker.as_bytes()).await?
        };
        Ok(Response::new(ListMarketsResponse { markets, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(market_ticker = %request.get_ref().market_ticker))]
    async fn get_settlement(
        &self,
        request: Request<GetSettlementRequest>,
    ) -> Result<Response<GetSettlementResponse>, Status> {
        let ticker = &request.get_ref().market_ticker;
        let settlement = self
            .cache
            .settlements()
            .through(ticker.clone(), async {
                let select = format!("SELECT {SETTLEMENT_COLUMNS} FROM settlements");
                let query = by_ticker(select, "market_ticker", ticker, "market_ticker")?;
                self.one(query, ticker, "settlement for market ticker", settlement_from_row).await
            })
            .await?;
        Ok(Response::new(GetSettlementResponse { settlement: Some(settlement) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_settlements(
        &self,
        request: Request<ListSettlementsRequest>,
    ) -> Result<Response<ListSettlementsResponse>, Status> {
        let req = request.into_inner();
        let page = Page::of(&req, Kind::Settlements, &self.tokens, |r| (&mut r.page_size, &mut r.page_token))?;
        let result = settlement_result(req.result, "result")?;
        let (start, end) =
            time::optional_range(req.settled_start.as_ref(), req.settled_end.as_ref(), "settled_start", "settled_end")?;
        let mut query = Query::new(format!("SELECT {SETTLEMENT_COLUMNS} FROM settlements"));
        if !req.event_ticker.is_empty() {
            query.filter("event_ticker = {}", req.event_ticker.clone(), Type::TEXT);
        }
        if !req.series_ticker.is_empty() {
            query.filter("series_ticker = {}", req.series_ticker.clone(), Type::TEXT);
        }
        if let Some(result) = result {
            query.filter("result = {}", result, Type::INT2);
        }
        if let Some(start) = start {
            query.filter("settled_time >= {}", start, Type::TIMESTAMPTZ);
        }
        if let Some(end) = end {
            query.filter("settled_time < {}", end, Type::TIMESTAMPTZ);
        }
        let (settlements, next_page_token) =
            self.page(page, query, "market_ticker", settlement_from_row, |s| s.market_ticker.as_bytes()).await?;
        Ok(Response::new(ListSettlementsResponse { settlements, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(markets = request.get_ref().market_tickers.len()))]
    async fn get_coverage(
        &self,
        request: Request<GetCoverageRequest>,
    ) -> Result<Response<GetCoverageResponse>, Status> {
        let (tickers, start, end) = coverage::validate(request.get_ref())?;
        let markets = coverage::cached_coverage(&self.pool, &self.cache, &tickers, start, end).await?;
        Ok(Response::new(GetCoverageResponse { markets }))
    }
}

/// A query with `$n` parameters added as filters are. Its text depends only on which filters are set, so each
/// pooled connection prepares it once.
struct Query {
    sql: String,
    values: Vec<Box<dyn ToSql + Sync + Send>>,
    types: Vec<Type>,
    conditions: usize,
}

impl Query {
    fn new(select: String) -> Self {
        Self { sql: select, values: Vec::new(), types: Vec::new(), conditions: 0 }
    }

    /// The next parameter, bound to `value` of SQL type `ty`, as `$n`.
    fn param(&mut self, value: impl ToSql + Sync + Send + 'static, ty: Type) -> String {
        self.values.push(Box::new(value));
        self.types.push(ty);
        format!("${}", self.values.len())
    }

    /// Adds `condition` with its `{}` replaced by the next parameter, bound to `value` of SQL type `ty`.
    fn filter(&mut self, condition: &str, value: impl ToSql + Sync + Send + 'static, ty: Type) {
        let placeholder = self.param(value, ty);
        self.sql.push_str(if self.conditions == 0 { " WHERE " } else { " AND " });
        self.sql.push_str(&condition.replace("{}", &placeholder));
        self.conditions += 1;
    }

    /// Runs the query on `conn`, prepared there once.
    async fn run(&self, conn: &Conn) -> Result<Vec<Row>, Error> {
        let statement = conn.prepared(&self.sql, &self.types).await?;
        let values: Vec<&(dyn ToSql + Sync)> = self.values.iter().map(|value| &**value as _).collect();
        Ok(conn.client().query(&statement, &values).await?)
    }
}

/// Where a list page starts and how long it is.
struct Page {
    kind: Kind,
    binding: token::Binding,
    size: usize,
    after: Option<String>,
}

impl Page {
    /// Validates page_size and page_token of `request`; `paging` picks those two fields, and what is left of the
    /// request without them, encoded, is the filter set a token is bound to.
    fn of<R: Message + Clone>(
        request: &R,
        kind: Kind,
        tokens: &token::TokenKey,
        paging: impl FnOnce(&mut R) -> (&mut i32, &mut String),
    ) -> Result<Self, Error> {
        let mut filters = request.clone();
        let (page_size, page_token) = paging(&mut filters);
        let (page_size, page_token) = (std::mem::take(page_size), std::mem::take(page_token));
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            1..=MAX_PAGE_SIZE => page_size,
            _ => {
                return Err(Error::invalid(
                    "page_size",
                    format!("must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {page_size}"),
                ));
            }
        };
        let binding = tokens.binding(&filters.encode_to_vec());
        let after = match page_token.as_str() {
            "" => None,
            t => {
                let key = token::decode(t, kind, &binding, "page_token")?;
                Some(String::from_utf8(key).map_err(|_| Error::invalid("page_token", "damaged token"))?)
            }
        };
        Ok(Self { kind, binding, size: size as usize, after })
    }

    /// Completes `query` with the keyset condition, order and limit (one row more than the page, to know whether
    /// another page follows).
    fn finish(&self, mut query: Query, key: &str) -> Query {
        if let Some(after) = &self.after {
            query.filter(&format!("{key} > {{}}"), after.clone(), Type::TEXT);
        }
        let limit = query.param(self.size as i64 + 1, Type::INT8);
        query.sql.push_str(&format!(" ORDER BY {key} LIMIT {limit}"));
        query
    }

    /// Cuts the extra row and returns the page with the token of the next one (empty on the last page).
    fn split<T>(&self, mut rows: Vec<T>, key: fn(&T) -> &[u8]) -> (Vec<T>, String) {
        if rows.len() <= self.size {
            return (rows, String::new());
        }
        rows.truncate(self.size);
        let next = rows.last().map(|last| token::encode(self.kind, &self.binding, key(last))).unwrap_or_default();
        (rows, next)
    }
}

/// A filter's MarketStatus: None for unspecified (any), INVALID_ARGUMENT listing the values for an unknown one.
fn market_status(value: i32, field: &str) -> Result<Option<i16>, Error> {
    match MarketStatus::try_from(value) {
        Ok(MarketStatus::Unspecified) => Ok(None),
        Ok(_) => Ok(Some(value as i16)),
        Err(_) => Err(Error::invalid(
            field,
            format!(
                "unknown value {value}; allowed: 0 (any) or MARKET_STATUS_INITIALIZED, INACTIVE, ACTIVE, CLOSED, \
                 DETERMINED, DISPUTED, AMENDED, FINALIZED (1 to 8)"
            ),
        )),
    }
}

/// A filter's SettlementResult: None for unspecified (any).
fn settlement_result(value: i32, field: &str) -> Result<Option<i16>, Error> {
    match SettlementResult::try_from(value) {
        Ok(SettlementResult::Unspecified) => Ok(None),
        Ok(_) => Ok(Some(value as i16)),
        Err(_) => Err(Error::invalid(
            field,
            format!("unknown value {value}; allowed: 0 (any) or SETTLEMENT_RESULT_YES, NO, SCALAR, VOID (1 to 4)"),
        )),
    }
}

/// Reads a row's columns in their order: by position, as looking each name up measured a tenth of a page's cost.
/// The fields of a struct literal are evaluated in the order written, so a mapper lists them in the order of
/// its `*_COLUMNS`.
struct Columns<'a> {
    row: &'a Row,
    next: usize,
}

impl<'a> Columns<'a> {
    fn of(row: &'a Row) -> Self {
        Self { row, next: 0 }
    }

    fn next<T: FromSql<'a>>(&mut self) -> Result<T, tokio_postgres::Error> {
        self.next += 1;
        self.row.try_get(self.next - 1)
    }

    fn time(&mut self) -> Result<Option<prost_types::Timestamp>, tokio_postgres::Error> {
        Ok(self.next::<Option<DateTime<Utc>>>()?.map(time::to_proto))
    }

    fn code(&mut self) -> Result<i32, tokio_postgres::Error> {
        Ok(i32::from(self.next::<i16>()?))
    }

    /// A `numeric` as its exact decimal text, empty for NULL.
    fn decimal(&mut self) -> Result<String, tokio_postgres::Error> {
        Ok(self.next::<Option<Decimal>>()?.map(|d| d.to_string()).unwrap_or_default())
    }
}

fn series_from_row(row: &Row) -> Result<Series, tokio_postgres::Error> {
    let mut c = Columns::of(row);
    Ok(Series {
        ticker: c.next()?,
        title: c.next()?,
        category: c.next()?,
        tags: c.next()?,
        frequency: c.next()?,
        contract_url: c.next()?,
        fee_type: c.next()?,
        updated_time: c.time()?,
    })
}

fn event_from_row(row: &Row) -> Result<Event, tokio_postgres::Error> {
    let mut c = Columns::of(row);
    Ok(Event {
        event_ticker: c.next()?,
        series_ticker: c.next()?,
        title: c.next()?,
        sub_title: c.next()?,
        category: c.next()?,
        mutually_exclusive: c.next()?,
        strike_date: c.time()?,
        strike_period: c.next()?,
        updated_time: c.time()?,
    })
}

fn market_from_row(row: &Row) -> Result<Market, tokio_postgres::Error> {
    let mut c = Columns::of(row);
    Ok(Market {
        ticker: c.next()?,
        event_ticker: c.next()?,
        series_ticker: c.next()?,
        market_type: c.code()?,
        title: c.next()?,
        yes_sub_title: c.next()?,
        no_sub_title: c.next()?,
        status: c.code()?,
        open_time: c.time()?,
        close_time: c.time()?,
        expected_expiration_time: c.time()?,
        latest_expiration_time: c.time()?,
        settlement_timer_seconds: c.next::<Option<i32>>()?.unwrap_or_default(),
        can_close_early: c.next()?,
        strike_type: c.next()?,
        floor_strike: c.decimal()?,
        cap_strike: c.decimal()?,
        rules_primary: c.next()?,
        rules_secondary: c.next()?,
        updated_time: c.time()?,
    })
}

fn settlement_from_row(row: &Row) -> Result<Settlement, tokio_postgres::Error> {
    let mut c = Columns::of(row);
    Ok(Settlement {
        market_ticker: c.next()?,
        event_ticker: c.next()?,
        series_ticker: c.next()?,
        result: c.code()?,
        settlement_value_micros: c.next()?,
        determined_time: c.time()?,
        settled_time: c.time()?,
        updated_time: c.time()?,
    })
}
