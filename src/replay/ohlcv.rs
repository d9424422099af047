//! OHLCV candles: periods folded from trades in the stream's total order, exactly, in integer arithmetic.
//!
//! [`Aggregator`] takes trades in the total order of StreamTrades, (time, market ticker, trade_id), and gives
//! candles in the order of StreamCandles, (period start, market ticker): the trades of one period are folded per
//! market, and when the first trade of a later period arrives the finished period's candles are handed out sorted
//! by ticker. It holds one accumulator per market that traded in the current period and, for the fill policy
//! PREVIOUS, one small state per market that traded in the range; never a range's trades.
//!
//! Nor a range's candles: a gap between trades, or between the last trade and the range end, may hold any number of
//! filled periods (a year of one-second periods is 31 million candles), so the filled candles of a gap are made
//! one period at a time as [`drain`](Aggregator::drain) is iterated, and an iteration that stops (the sender waits
//! for its client) resumes where it stopped. What the aggregator holds at once is one period's candles.
//!
//! Periods are aligned to UTC midnight (the Unix epoch is one): an interval divides 86,400 seconds, so every
//! period lies inside one UTC day.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::{
    error::Error,
    proto::{self, FillPolicy},
};

/// Microseconds per second.
const MICROS: i64 = 1_000_000;
/// Seconds per UTC day: every interval divides it.
const DAY_SECONDS: i32 = 86_400;

/// A period length that divides a UTC day, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(i64);

impl Interval {
    /// Checks `interval_seconds`: a whole number from 1 to 86,400 that divides 86,400.
    pub fn new(seconds: i32) -> Result<Self, Error> {
        if !(1..=DAY_SECONDS).contains(&seconds) || DAY_SECONDS % seconds != 0 {
            return Err(Error::invalid(
                "interval_seconds",
                format!(
                    "must be a whole number of seconds from 1 to 86400 that divides 86400, such as 60 (1 minute), \
                     3600 (1 hour) or 86400 (1 day); got {seconds}"
                ),
            ));
        }
        Ok(Self(i64::from(seconds) * MICROS))
    }

    /// The start of the period holding `micros` (microseconds since the epoch).
    pub fn start_of(self, micros: i64) -> i64 {
        micros - micros.rem_euclid(self.0)
    }

    /// The length of a period in microseconds.
    pub fn micros(self) -> i64 {
        self.0
    }
}

/// What the aggregator folds: one trade, or the totals of a market's trades in a bucket that lies inside one
/// period (read from the write-time aggregates, see [`crate::replay::aggregates`]).
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    /// The trade's time, or the bucket's start.
    pub ts: i64,
    pub ticker: &'a str,
    pub totals: Totals,
}

impl<'a> Part<'a> {
    /// One trade.
    pub fn trade(ts: i64, ticker: &'a str, price: i64, count: i64) -> Self {
        let totals = Totals {
            open: price,
            high: price,
            low: price,
            close: price,
            volume: count,
            trades: 1,
            notional: i128::from(price) * i128::from(count),
        };
        Self { ts, ticker, totals }
    }
}

/// What some trades of one market add up to: a part, or a market's current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub close: i64,
    pub volume: i64,
    pub trades: i64,
    /// Σ price × count: at most 10^6 × 2^63, hence 128 bits.
    pub notional: i128,
}

impl Totals {
    /// Adds the totals of the trades that follow these in the total order.
    fn add(&mut self, later: &Self) {
        self.high = self.high.max(later.high);
        self.low = self.low.min(later.low);
        self.close = later.close;
        self.volume += later.volume;
        self.trades += later.trades;
        self.notional += later.notional;
    }
}

/// A finished candle; times in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candle {
    pub ticker: String,
    pub period_start: i64,
    pub period_end: i64,
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub close: i64,
    pub volume: i64,
    pub trades: i64,
    pub vwap: i64,
    pub previous: Option<i64>,
    pub empty: bool,
    pub partial: bool,
}

/// What PREVIOUS fill and `previous` need to know of a market between periods.
#[derive(Debug, Clone, Copy, Default)]
pub struct MarketState {
    /// The last traded price so far (before the range too, when known).
    pub last: Option<i64>,
    /// Whether the market traded in the range yet: filling starts at its first trade in the range.
    pub started: bool,
    /// When the market closes, if known: no filled period starts at or after it.
    pub close: Option<i64>,
}

/// Folds trades into candles. Feed trades with [`push`](Self::push) in the total order; take the finished
/// candles with [`drain`](Self::drain) after each push; call [`finish`](Self::finish) after the last trade, and
/// drain again.
#[derive(Debug)]
pub struct Aggregator {
    interval: Interval,
    fill: bool,
    /// The requested range, [start, end).
    start: i64,
    end: i64,
    /// The current period's start; None before the first trade.
    current: Option<i64>,
    /// The markets that traded in the current period, in ticker (byte) order.
    open: BTreeMap<String, Totals>,
    /// Per market: the last price, whether it started, its close. Only markets with a known state are held.
    markets: HashMap<String, MarketState>,
    /// With PREVIOUS fill: the started markets not found closed yet, in ticker order (periods only ascend, so a
    /// market closed at one period stays out).
    filling: BTreeSet<String>,
    /// Finished candles, in stream order, not yet taken: at most one period's.
    ready: VecDeque<Candle>,
    /// With PREVIOUS fill, the periods still to fill, [from, until) (period starts): their empty candles follow
    /// `ready`, and are made one period at a time as they are taken.
    gap: Option<(i64, i64)>,
}

impl Aggregator {
    /// An aggregator for the range [start, end) (microseconds); `markets` holds what is known of each market
    /// before the range: its last trade before `start` and its close time.
    pub fn new(
        interval: Interval,
        fill: FillPolicy,
        start: i64,
        end: i64,
        markets: HashMap<String, MarketState>,
    ) -> Self {
        let fill = fill == FillPolicy::Previous;
        let filling = if fill {
            markets.iter().filter(|(_, m)| m.started).map(|(t, _)| t.clone()).collect()
        } else {
            BTreeSet::new()
        };
        Self {
            interval,
            fill,
            start,
            end,
            current: None,
            open: BTreeMap::new(),
            markets,
            filling,
            ready: VecDeque::new(),
            gap: None,
        }
    }

    /// Starts a resumed stream at `period`: the periods before it were delivered, so filling starts there.
    pub fn resume_at(&mut self, period: i64) {
        self.current = Some(period);
    }

    /// Adds the next trade, or bucket, in the total order: ascending time, and within a market the parts of a
    /// period in time order. Parts must lie in the range. The candles of a gap not yet drained are made here, all
    /// at once (they depend on the state this part changes): drain after every push to keep memory bounded.
    pub fn push(&mut self, part: Part<'_>) {
        let period = self.interval.start_of(part.ts);
        match self.current {
            Some(current) if current == period => {}
            Some(current) => {
                debug_assert!(period > current, "parts come in ascending time");
                self.fill_gap();
                self.close_period(current);
                self.gap = Some((current + self.interval.micros(), period));
                self.current = Some(period);
            }
            None => self.current = Some(period),
        }
        match self.open.get_mut(part.ticker) {
            Some(totals) => totals.add(&part.totals),
            None => {
                self.open.insert(part.ticker.to_owned(), part.totals);
            }
        }
    }

    /// Ends the stream: the last period with trades, then (PREVIOUS) the filled periods up to the range end.
    pub fn finish(&mut self) {
        if let Some(current) = self.current.take() {
            self.fill_gap();
            self.close_period(current);
            self.gap = Some((current + self.interval.micros(), self.end));
        }
    }

    /// The candles finished so far, in stream order; the filled ones are made as the iterator is advanced. What
    /// an iterator dropped early did not take stays for the next one.
    pub fn drain(&mut self) -> Drain<'_> {
        Drain(self)
    }

    /// The next finished candle, filling the gap's next period when the ready ones are taken.
    fn next_candle(&mut self) -> Option<Candle> {
        loop {
            if let Some(candle) = self.ready.pop_front() {
                return Some(candle);
            }
            if !self.fill_next_period() {
                return None;
            }
        }
    }

    /// Hands out the candles of `period`: those of the markets that traded in it and, with PREVIOUS fill, an
    /// empty one for every other started market still open, all in ticker order.
    fn close_period(&mut self, period: i64) {
        let mut filled = self.fill_candidates(period);
        let open = std::mem::take(&mut self.open);
        // a market that traded in the period gets its traded candle, not an empty one
        filled.retain(|ticker| !open.contains_key(ticker));
        let period_end = period + self.interval.micros();
        let partial = period < self.start || period_end > self.end;
        let mut traded = open.into_iter().peekable();
        loop {
            // merge the traded markets with the empty ones, by ticker; a market is never in both
            let take_traded = match (traded.peek(), filled.last()) {
                (Some((ticker, _)), Some(empty)) => ticker.as_str() < empty.as_str(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_traded {
                let (ticker, totals) = traded.next().expect("peeked");
                let state = self.markets.entry(ticker.clone()).or_default();
                let previous = state.last;
                state.last = Some(totals.close);
                if !state.started && self.fill {
                    self.filling.insert(ticker.clone());
                }
                state.started = true;
                self.ready.push_back(Candle {
                    ticker,
                    period_start: period,
                    period_end,
                    open: totals.open,
                    high: totals.high,
                    low: totals.low,
                    close: totals.close,
                    volume: totals.volume,
                    trades: totals.trades,
                    vwap: vwap(totals.notional, totals.volume).unwrap_or(totals.close),
                    previous,
                    empty: false,
                    partial,
                });
            } else {
                let ticker = filled.pop().expect("looked at");
                let last = self.markets[&ticker].last.expect("a started market has traded");
                self.ready.push_back(empty_candle(ticker, period, period_end, last, partial));
            }
        }
    }

    /// Makes the empty candles of the gap's first period (PREVIOUS fill) and moves the gap past it; false when
    /// there is nothing left to fill.
    fn fill_next_period(&mut self) -> bool {
        let Some((period, until)) = self.gap else { return false };
        if !self.fill || period >= until {
            self.gap = None;
            return false;
        }
        let mut filled = self.fill_candidates(period);
        if filled.is_empty() {
            // every started market is closed at this period, hence at every later one: nothing to fill
            self.gap = None;
            return false;
        }
        let period_end = period + self.interval.micros();
        let partial = period < self.start || period_end > self.end;
        while let Some(ticker) = filled.pop() {
            let last = self.markets[&ticker].last.expect("a started market has traded");
            self.ready.push_back(empty_candle(ticker, period, period_end, last, partial));
        }
        self.gap = Some((period_end, until));
        true
    }

    /// Makes the rest of the gap at once: only when a push or finish comes before the gap was drained.
    fn fill_gap(&mut self) {
        while self.fill_next_period() {}
    }

    /// The markets that get an empty candle for `period` unless they trade in it: started and not closed by its
    /// start; sorted descending, so that popping gives ticker order.
    fn fill_candidates(&mut self, period: i64) -> Vec<String> {
        let markets = &self.markets;
        self.filling.retain(|ticker| markets[ticker].close.is_none_or(|c| period < c));
        self.filling.iter().rev().cloned().collect()
    }
}

/// The finished candles of an [`Aggregator`], in stream order, made as they are taken (see
/// [`Aggregator::drain`]).
#[derive(Debug)]
pub struct Drain<'a>(&'a mut Aggregator);

impl Iterator for Drain<'_> {
    type Item = Candle;

    fn next(&mut self) -> Option<Candle> {
        self.0.next_candle()
    }
}

impl Candle {
    pub fn to_proto(&self) -> proto::Candle {
        proto::Candle {
            market_ticker: self.ticker.clone(),
            period_start: Some(crate::time::micros_to_proto(self.period_start)),
            period_end: Some(crate::time::micros_to_proto(self.period_end)),
            open_micros: self.open,
            high_micros: self.high,
            low_micros: self.low,
            close_micros: self.close,
            volume_centi: self.volume,
            trade_count: self.trades,
            vwap_micros: self.vwap,
            previous_micros: self.previous,
            empty: self.empty,
            partial: self.partial,
        }
    }
}

fn empty_candle(ticker: String, period_start: i64, period_end: i64, last: i64, partial: bool) -> Candle {
    Candle {
        ticker,
        period_start,
        period_end,
        open: last,
        high: last,
        low: last,
        close: last,
        volume: 0,
        trades: 0,
        vwap: last,
        previous: Some(last),
        empty: true,
        partial,
    }
}

/// Σ(price × count) / Σ count rounded half to even; None without volume.
pub fn vwap(notional: i128, volume: i64) -> Option<i64> {
    if volume <= 0 {
        return None;
    }
    let volume = i128::from(volume);
    let (quotient, remainder) = (notional.div_euclid(volume), notional.rem_euclid(volume));
    let rounded = match (2 * remainder).cmp(&volume) {
        std::cmp::Ordering::Less => quotient,
        std::cmp::Ordering::Greater => quotient + 1,
        std::cmp::Ordering::Equal => quotient + (quotient & 1),
    };
    i64::try_from(rounded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60 * MICROS;

    fn tick(ts: i64, ticker: &str, price: i64, count: i64) -> Part<'_> {
        Part::trade(ts, ticker, price, count)
    }

    fn run(fill: FillPolicy, range: (i64, i64), markets: &[(&str, MarketState)], ticks: &[Part<'_>]) -> Vec<Candle> {
        let markets = markets.iter().map(|(t, s)| ((*t).to_owned(), *s)).collect();
        let mut aggregator = Aggregator::new(Interval::new(60).expect("interval"), fill, range.0, range.1, markets);
        let mut out = Vec::new();
        for &t in ticks {
            aggregator.push(t);
            out.extend(aggregator.drain());
        }
        aggregator.finish();
        out.extend(aggregator.drain());
        out
    }

    fn summary(candles: &[Candle]) -> Vec<(i64, &str, [i64; 6], bool)> {
        candles
            .iter()
            .map(|c| {
                (c.period_start / MIN, c.ticker.as_str(), [c.open, c.high, c.low, c.close, c.volume, c.trades], c.empty)
            })
            .collect()
    }

    #[test]
    fn intervals_divide_a_day_and_align_to_midnight() {
        for ok in [1, 2, 60, 90, 3600, 7200, 86_400] {
            assert!(Interval::new(ok).is_ok(), "{ok}");
        }
        for bad in [0, -60, 7, 86_401, 172_800, 100_000] {
            let error = Interval::new(bad).expect_err("refused");
            assert!(error.to_string().contains("interval_seconds"), "{error}");
        }
        let hour = Interval::new(3600).expect("hour");
        assert_eq!(hour.start_of(3600 * MICROS + 1), 3600 * MICROS);
        assert_eq!(hour.start_of(3600 * MICROS - 1), 0);
        assert_eq!(hour.start_of(-1), -3600 * MICROS, "before the epoch too");
    }

    #[test]
    fn vwap_rounds_half_to_even() {
        assert_eq!(vwap(10, 4), Some(2), "2.5 -> 2");
        assert_eq!(vwap(14, 4), Some(4), "3.5 -> 4");
        assert_eq!(vwap(13, 4), Some(3), "3.25 -> 3");
        assert_eq!(vwap(15, 4), Some(4), "3.75 -> 4");
        assert_eq!(vwap(0, 0), None);
        // exact with the largest prices and counts: no float, no overflow
        let count = i64::MAX / 2;
        let notional = i128::from(999_999) * i128::from(count) * 2;
        assert_eq!(vwap(notional, count * 2), Some(999_999));
    }

    #[test]
    fn trades_fold_into_periods_in_period_then_ticker_order() {
        let ticks = [
            tick(0, "B", 400_000, 100),
            tick(MIN / 2, "A", 500_000, 200),
            tick(MIN / 2, "B", 450_000, 100),
            tick(MIN - 1, "B", 300_000, 300),
            tick(3 * MIN, "A", 510_000, 100),
        ];
        let candles = run(FillPolicy::None, (0, 4 * MIN), &[], &ticks);
        assert_eq!(
            summary(&candles),
            [
                (0, "A", [500_000, 500_000, 500_000, 500_000, 200, 1], false),
                (0, "B", [400_000, 450_000, 300_000, 300_000, 500, 3], false),
                (3, "A", [510_000, 510_000, 510_000, 510_000, 100, 1], false),
            ]
        );
        // B: (400000*100 + 450000*100 + 300000*300) / 500 = 350000
        assert_eq!(candles[1].vwap, 350_000);
        assert_eq!((candles[0].previous, candles[2].previous), (None, Some(500_000)));
        assert!(candles.iter().all(|c| !c.partial && c.period_end == c.period_start + MIN));
    }

    #[test]
    fn previous_fill_repeats_the_close_until_the_end_or_the_close_time() {
        let before = MarketState { last: Some(100_000), started: false, close: None };
        let closing = MarketState { last: None, started: false, close: Some(3 * MIN) };
        let ticks = [tick(MIN, "A", 200_000, 100), tick(MIN, "C", 300_000, 100), tick(4 * MIN + 5, "A", 250_000, 100)];
        let candles = run(FillPolicy::Previous, (0, 6 * MIN), &[("A", before), ("C", closing)], &ticks);
        assert_eq!(
            summary(&candles),
            [
                // nothing before a market's first trade in the range, although A's earlier price is known
                (1, "A", [200_000, 200_000, 200_000, 200_000, 100, 1], false),
                (1, "C", [300_000, 300_000, 300_000, 300_000, 100, 1], false),
                (2, "A", [200_000, 200_000, 200_000, 200_000, 0, 0], true),
                (2, "C", [300_000, 300_000, 300_000, 300_000, 0, 0], true),
                // C closes at minute 3: no period of it starts at or after that
                (3, "A", [200_000, 200_000, 200_000, 200_000, 0, 0], true),
                (4, "A", [250_000, 250_000, 250_000, 250_000, 100, 1], false),
                (5, "A", [250_000, 250_000, 250_000, 250_000, 0, 0], true),
            ]
        );
        assert_eq!(candles[0].previous, Some(100_000), "the last trade before the range");
        assert_eq!((candles[2].vwap, candles[2].previous), (200_000, Some(200_000)), "empty: close and previous");
        // without fill: the traded periods only
        let unfilled = run(FillPolicy::None, (0, 6 * MIN), &[("A", before), ("C", closing)], &ticks);
        assert_eq!(unfilled.len(), 3);
    }

    /// A gap of any length is filled as it is taken: a day of one-second periods after one trade holds one
    /// period's candles at a time, a drain stopped early resumes at the next period, and a push that comes
    /// before a gap was taken still gives the gap first.
    #[test]
    fn filled_gaps_are_made_as_they_are_taken() {
        const DAY: i64 = 86_400 * MICROS;
        let second = Interval::new(1).expect("interval");
        let new = || Aggregator::new(second, FillPolicy::Previous, 0, DAY, HashMap::new());
        let mut aggregator = new();
        aggregator.push(tick(0, "A", 100_000, 1));
        aggregator.push(tick(MICROS / 2, "B", 200_000, 1));
        aggregator.finish();
        assert!(aggregator.ready.len() <= 2, "only the traded period is made: {}", aggregator.ready.len());
        let first: Vec<_> = aggregator.drain().take(5).map(|c| (c.period_start / MICROS, c.ticker)).collect();
        assert_eq!(first, [(0, "A".into()), (0, "B".into()), (1, "A".into()), (1, "B".into()), (2, "A".into())]);
        assert!(aggregator.ready.len() <= 2, "one period at a time: {}", aggregator.ready.len());
        let mut rest = aggregator.drain();
        let next = rest.next().expect("the gap goes on");
        assert_eq!((next.period_start, next.ticker.as_str(), next.empty), (2 * MICROS, "B", true));
        assert_eq!(rest.count(), 2 * 86_400 - 6, "every second of the day, for both markets");

        // pushed without draining: the gap comes out whole, before the next period
        let mut eager = new();
        eager.push(tick(0, "A", 100_000, 1));
        eager.push(tick(5 * MICROS, "A", 300_000, 1));
        let starts: Vec<_> = eager.drain().map(|c| (c.period_start / MICROS, c.empty)).collect();
        assert_eq!(starts, [(0, false), (1, true), (2, true), (3, true), (4, true)]);
        eager.push(tick(7 * MICROS, "A", 300_000, 1));
        eager.push(tick(9 * MICROS, "A", 300_000, 1));
        let starts: Vec<_> = eager.drain().map(|c| (c.period_start / MICROS, c.empty)).collect();
        assert_eq!(starts, [(5, false), (6, true), (7, false), (8, true)]);
    }

    #[test]
    fn periods_cut_by_the_range_are_partial() {
        let ticks = [tick(MIN / 2, "A", 100_000, 100), tick(2 * MIN, "A", 200_000, 100), tick(3 * MIN + 1, "A", 1, 1)];
        let candles = run(FillPolicy::Previous, (MIN / 3, 3 * MIN + MIN / 2), &[], &ticks);
        let flags: Vec<_> = candles.iter().map(|c| (c.period_start / MIN, c.empty, c.partial)).collect();
        assert_eq!(flags, [(0, false, true), (1, true, false), (2, false, false), (3, false, true)]);
    }
}
