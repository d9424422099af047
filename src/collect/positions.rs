//! Where each walk of a backfill (a market's trades, or its candles of one period) stands (table
//! `collect_positions`, migration 0009): saved in the same transaction as the page whose rows it follows, so a
//! killed backfill goes on from the next page. A candle walk keeps the next window's `start_ts` (unix seconds) as
//! its cursor.

use chrono::{DateTime, Utc};

use crate::{error::Error, ingest::write::PendingWrite, store::db::Pool};

/// A walk through one endpoint's pages for one market.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// Kalshi's cursor of the next page; empty when the walk is not under way.
    pub cursor: String,
    /// The range the walk asks for (Kalshi's min_ts and max_ts).
    pub min: Option<DateTime<Utc>>,
    pub max: Option<DateTime<Utc>>,
    /// Every trade up to this time is stored, by walks before.
    pub through: Option<DateTime<Utc>>,
}

/// The stored position of walk `name`, if any.
pub async fn load(pool: &Pool, name: &str) -> Result<Option<Walk>, Error> {
    let row = pool
        .get()
        .await?
        .query_opt("SELECT cursor, walk_min, walk_max, through FROM collect_positions WHERE walk = $1", &[&name])
        .await?;
    Ok(row.map(|r| Walk { cursor: r.get(0), min: r.get(1), max: r.get(2), through: r.get(3) }))
}

/// A page of the walk is in: saves its cursor with the page's rows, or, after the last page, that the walk's
/// source is stored up to its `max` (when the walk began where the stored part ended, or at the beginning).
pub fn save(write: &mut PendingWrite, name: &str, walk: &Walk) {
    const UNDER_WAY: &str = "INSERT INTO collect_positions (walk, cursor, walk_min, walk_max)
         VALUES ($1::text, $2::text, $3::text::timestamptz, $4::text::timestamptz)
         ON CONFLICT (walk) DO UPDATE SET cursor = excluded.cursor, walk_min = excluded.walk_min,
           walk_max = excluded.walk_max, updated_at = now()";
    const FINISHED: &str = "INSERT INTO collect_positions AS p (walk, through)
         VALUES ($1::text, CASE WHEN $2::text IS NULL THEN $3::text::timestamptz END)
         ON CONFLICT (walk) DO UPDATE SET cursor = '', walk_min = NULL, walk_max = NULL, updated_at = now(),
           through = CASE WHEN $2::text IS NULL OR $2::text::timestamptz <= p.through
                          THEN greatest(p.through, $3::text::timestamptz) ELSE p.through END";
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
    if walk.cursor.is_empty() {
        write.also(FINISHED, vec![Some(name.to_owned()), time(walk.min), time(walk.max)]);
    } else {
        write.also(UNDER_WAY, vec![Some(name.to_owned()), Some(walk.cursor.clone()), time(walk.min), time(walk.max)]);
    }
}
