//! ReferenceService: lookups of the series -> event -> market hierarchy, settlements and coverage.
//!
//! List RPCs page by keyset on their unique ticker (`WHERE key > last ORDER BY key LIMIT n + 1`), so a walk sees
//! every row that existed throughout exactly once, whatever is inserted meanwhile, and no page costs more than
//! the first. The SQL of a list is built from the filters that are set, so the planner sees plain predicates.

use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use tokio_postgres::{
    Row,
    types::{ToSql, Type},
};
use tonic::{Request, Response, Status};

use crate::{
    coverage,
    db::Pool,
    error::Error,
    proto::{
        Event, GetCoverageRequest, GetCoverageResponse, GetEventRequest, GetEventResponse, GetMarketRequest,
        GetMarketResponse, GetSeriesRequest, GetSeriesResponse, GetSettlementRequest, GetSettlementResponse,
        ListEventsRequest, ListEventsResponse, ListMarketsRequest, ListMarketsResponse, ListSeriesRequest,
        ListSeriesResponse, ListSettlementsRequest, ListSettlementsResponse, Market, MarketStatus, Series, Settlement,
        SettlementResult, reference_service_server::ReferenceService,
    },
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
}

impl ReferenceApi {
    /// A service reading from `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Runs one query and maps its rows.
    async fn rows<T>(&self, query: &Query, map: RowMap<T>) -> Result<Vec<T>, Error> {
        let conn = self.pool.get().await?;
        let params: Vec<(&(dyn ToSql + Sync), Type)> =
            query.params.iter().map(|(value, ty)| (&**value as _, ty.clone())).collect();
        // typed parameters let the driver parse, bind and execute in one round trip (no describe step)
        let rows = conn.query_typed(&query.sql, &params).await?;
        Ok(rows.iter().map(map).collect::<Result<_, _>>()?)
    }

    /// The one row of a Get, or NOT_FOUND naming the ticker.
    async fn one<T>(
        &self,
        sql: &str,
        ticker: &str,
        field: &str,
        kind: &'static str,
        map: RowMap<T>,
    ) -> Result<T, Error> {
        if ticker.is_empty() {
            return Err(Error::invalid(field, "required"));
        }
        let conn = self.pool.get().await?;
        match conn.query_typed(sql, &[(&ticker, Type::TEXT)]).await?.first() {
            Some(row) => Ok(map(row)?),
            None => Err(Error::NotFound { kind, names: vec![ticker.to_owned()] }),
        }
    }
}

#[tonic::async_trait]
impl ReferenceService for ReferenceApi {
    #[tracing::instrument(skip_all, fields(ticker = %request.get_ref().ticker))]
    async fn get_series(&self, request: Request<GetSeriesRequest>) -> Result<Response<GetSeriesResponse>, Status> {
        let sql = format!("SELECT {SERIES_COLUMNS} FROM series WHERE ticker = $1");
        let series = self.one(&sql, &request.get_ref().ticker, "ticker", "series ticker", series_from_row).await?;
        Ok(Response::new(GetSeriesResponse { series: Some(series) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_series(&self, request: Request<ListSeriesRequest>) -> Result<Response<ListSeriesResponse>, Status> {
        let req = request.into_inner();
        let page = Page::of(&req, Kind::Series, req.page_size, &req.page_token, |r| {
            r.page_size = 0;
            r.page_token.clear();
        })?;
        let mut query = Query::new(format!("SELECT {SERIES_COLUMNS} FROM series"));
        if !req.category.is_empty() {
            query.filter("category = {}", req.category.clone(), Type::TEXT);
        }
        if !req.tag.is_empty() {
            query.filter("{} = ANY(tags)", req.tag.clone(), Type::TEXT);
        }
        let series = self.rows(&page.finish(query, "ticker"), series_from_row).await?;
        let (series, next_page_token) = page.split(series, |s| s.ticker.as_bytes());
        Ok(Response::new(ListSeriesResponse { series, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(event_ticker = %request.get_ref().event_ticker))]
    async fn get_event(&self, request: Request<GetEventRequest>) -> Result<Response<GetEventResponse>, Status> {
        let req = request.into_inner();
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_ticker = $1");
        let event = self.one(&sql, &req.event_ticker, "event_ticker", "event ticker", event_from_row).await?;
        let markets = if req.include_markets {
            let mut query = Query::new(format!("SELECT {MARKET_COLUMNS} FROM markets"));
            query.filter("event_ticker = {}", req.event_ticker, Type::TEXT);
            query.sql.push_str(" ORDER BY ticker");
            self.rows(&query, market_from_row).await?
        } else {
            Vec::new()
        };
        Ok(Response::new(GetEventResponse { event: Some(event), markets }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_events(&self, request: Request<ListEventsRequest>) -> Result<Response<ListEventsResponse>, Status> {
        let req = request.into_inner();
        let page = Page::of(&req, Kind::Events, req.page_size, &req.page_token, |r| {
            r.page_size = 0;
            r.page_token.clear();
        })?;
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
        let events = self.rows(&page.finish(query, "event_ticker"), event_from_row).await?;
        let (events, next_page_token) = page.split(events, |e| e.event_ticker.as_bytes());
        Ok(Response::new(ListEventsResponse { events, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(ticker = %request.get_ref().ticker))]
    async fn get_market(&self, request: Request<GetMarketRequest>) -> Result<Response<GetMarketResponse>, Status> {
        let sql = format!("SELECT {MARKET_COLUMNS} FROM markets WHERE ticker = $1");
        let market = self.one(&sql, &request.get_ref().ticker, "ticker", "market ticker", market_from_row).await?;
        Ok(Response::new(GetMarketResponse { market: Some(market) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_markets(
        &self,
        request: Request<ListMarketsRequest>,
    ) -> Result<Response<ListMarketsResponse>, Status> {
        let req = request.into_inner();
        let page = Page::of(&req, Kind::Markets, req.page_size, &req.page_token, |r| {
            r.page_size = 0;
            r.page_token.clear();
        })?;
        let status = market_status(req.status, "status")?;
        let (start, end) =
            time::optional_range(req.window_start.as_ref(), req.window_end.as_ref(), "window_start", "window_end")?;
        let mut query = Query::new(format!("SELECT {MARKET_COLUMNS} FROM markets"));
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
        let markets = self.rows(&page.finish(query, "ticker"), market_from_row).await?;
        let (markets, next_page_token) = page.split(markets, |m| m.ticker.as_bytes());
        Ok(Response::new(ListMarketsResponse { markets, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(market_ticker = %request.get_ref().market_ticker))]
    async fn get_settlement(
        &self,
        request: Request<GetSettlementRequest>,
    ) -> Result<Response<GetSettlementResponse>, Status> {
        let sql = format!("SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE market_ticker = $1");
        let ticker = &request.get_ref().market_ticker;
        let settlement =
            self.one(&sql, ticker, "market_ticker", "settlement for market ticker", settlement_from_row).await?;
        Ok(Response::new(GetSettlementResponse { settlement: Some(settlement) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_settlements(
        &self,
        request: Request<ListSettlementsRequest>,
    ) -> Result<Response<ListSettlementsResponse>, Status> {
        let req = request.into_inner();
        let page = Page::of(&req, Kind::Settlements, req.page_size, &req.page_token, |r| {
            r.page_size = 0;
            r.page_token.clear();
        })?;
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
        let settlements = self.rows(&page.finish(query, "market_ticker"), settlement_from_row).await?;
        let (settlements, next_page_token) = page.split(settlements, |s| s.market_ticker.as_bytes());
        Ok(Response::new(ListSettlementsResponse { settlements, next_page_token }))
    }

    #[tracing::instrument(skip_all, fields(markets = request.get_ref().market_tickers.len()))]
    async fn get_coverage(
        &self,
        request: Request<GetCoverageRequest>,
    ) -> Result<Response<GetCoverageResponse>, Status> {
        let (tickers, start, end) = coverage::validate(request.get_ref())?;
        let conn = self.pool.get().await.map_err(Error::from)?;
        let markets = coverage::coverage(&*conn, &tickers, start, end).await?;
        Ok(Response::new(GetCoverageResponse { markets }))
    }
}

/// A query with `$n` parameters added as filters are.
struct Query {
    sql: String,
    params: Vec<(Box<dyn ToSql + Sync + Send>, Type)>,
    conditions: usize,
}

impl Query {
    fn new(select: String) -> Self {
        Self { sql: select, params: Vec::new(), conditions: 0 }
    }

    /// Adds `condition` with its `{}` replaced by the next parameter, bound to `value` of SQL type `ty`.
    fn filter(&mut self, condition: &str, value: impl ToSql + Sync + Send + 'static, ty: Type) {
        self.params.push((Box::new(value), ty));
        let placeholder = format!("${}", self.params.len());
        self.sql.push_str(if self.conditions == 0 { " WHERE " } else { " AND " });
        self.sql.push_str(&condition.replace("{}", &placeholder));
        self.conditions += 1;
    }
}

/// Where a list page starts and how long it is.
struct Page {
    kind: Kind,
    binding: [u8; 8],
    size: usize,
    after: Option<String>,
}

impl Page {
    /// Validates page_size and page_token of `request`; `clear_paging` blanks those two fields so that what is
    /// left, encoded, is the filter set a token is bound to.
    fn of<R: Message + Clone>(
        request: &R,
        kind: Kind,
        page_size: i32,
        page_token: &str,
        clear_paging: impl FnOnce(&mut R),
    ) -> Result<Self, Error> {
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
        let mut filters = request.clone();
        clear_paging(&mut filters);
        let binding = token::binding(&filters.encode_to_vec());
        let after = match page_token {
            "" => None,
            t => {
                let key = token::decode(t, kind, binding, "page_token")?;
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
        query.sql.push_str(&format!(" ORDER BY {key} LIMIT {}", self.size + 1));
        query
    }

    /// Cuts the extra row and returns the page with the token of the next one (empty on the last page).
    fn split<T>(&self, mut rows: Vec<T>, key: fn(&T) -> &[u8]) -> (Vec<T>, String) {
        if rows.len() <= self.size {
            return (rows, String::new());
        }
        rows.truncate(self.size);
        let next = rows.last().map(|last| token::encode(self.kind, self.binding, key(last))).unwrap_or_default();
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

fn ts(row: &Row, column: &str) -> Result<Option<prost_types::Timestamp>, tokio_postgres::Error> {
    Ok(row.try_get::<_, Option<DateTime<Utc>>>(column)?.map(time::to_proto))
}

fn series_from_row(row: &Row) -> Result<Series, tokio_postgres::Error> {
    Ok(Series {
        ticker: row.try_get("ticker")?,
        title: row.try_get("title")?,
        category: row.try_get("category")?,
        tags: row.try_get("tags")?,
        frequency: row.try_get("frequency")?,
        contract_url: row.try_get("contract_url")?,
        fee_type: row.try_get("fee_type")?,
        updated_time: ts(row, "updated_at")?,
    })
}

fn event_from_row(row: &Row) -> Result<Event, tokio_postgres::Error> {
    Ok(Event {
        event_ticker: row.try_get("event_ticker")?,
        series_ticker: row.try_get("series_ticker")?,
        title: row.try_get("title")?,
        sub_title: row.try_get("sub_title")?,
        category: row.try_get("category")?,
        mutually_exclusive: row.try_get("mutually_exclusive")?,
        strike_date: ts(row, "strike_date")?,
        strike_period: row.try_get("strike_period")?,
        updated_time: ts(row, "updated_at")?,
    })
}

fn market_from_row(row: &Row) -> Result<Market, tokio_postgres::Error> {
    let strike = |column: &str| -> Result<String, tokio_postgres::Error> {
        Ok(row.try_get::<_, Option<Decimal>>(column)?.map(|d| d.to_string()).unwrap_or_default())
    };
    Ok(Market {
        ticker: row.try_get("ticker")?,
        event_ticker: row.try_get("event_ticker")?,
        series_ticker: row.try_get("series_ticker")?,
        market_type: i32::from(row.try_get::<_, i16>("market_type")?),
        title: row.try_get("title")?,
        yes_sub_title: row.try_get("yes_sub_title")?,
        no_sub_title: row.try_get("no_sub_title")?,
        status: i32::from(row.try_get::<_, i16>("status")?),
        open_time: ts(row, "open_time")?,
        close_time: ts(row, "close_time")?,
        expected_expiration_time: ts(row, "expected_expiration_time")?,
        latest_expiration_time: ts(row, "latest_expiration_time")?,
        settlement_timer_seconds: row.try_get::<_, Option<i32>>("settlement_timer_seconds")?.unwrap_or_default(),
        can_close_early: row.try_get("can_close_early")?,
        strike_type: row.try_get("strike_type")?,
        floor_strike: strike("floor_strike")?,
        cap_strike: strike("cap_strike")?,
        rules_primary: row.try_get("rules_primary")?,
        rules_secondary: row.try_get("rules_secondary")?,
        updated_time: ts(row, "updated_at")?,
    })
}

fn settlement_from_row(row: &Row) -> Result<Settlement, tokio_postgres::Error> {
    Ok(Settlement {
        market_ticker: row.try_get("market_ticker")?,
        event_ticker: row.try_get("event_ticker")?,
        series_ticker: row.try_get("series_ticker")?,
        result: i32::from(row.try_get::<_, i16>("result")?),
        settlement_value_micros: row.try_get("settlement_value_micros")?,
        determined_time: ts(row, "determined_time")?,
        settled_time: ts(row, "settled_time")?,
        updated_time: ts(row, "updated_at")?,
    })
}
