-- Where `kalshi-replay collect backfill` stands in each of its walks through Kalshi's REST pages.
--
-- A walk is one endpoint's pages for one market (e.g. the trades of KXBTCD-25NOV2517 from /markets/trades), named
-- by `walk`. While it runs, `cursor` is Kalshi's cursor for its next page and `walk_min`/`walk_max` the time range
-- it asked for; each page's rows and the new cursor commit in one transaction, so a backfill killed at any point
-- goes on from the page after the last one stored. A finished walk clears the cursor and sets `through`: every
-- trade of the walk's source up to that time is stored, and the next backfill asks only for later ones.
CREATE TABLE collect_positions (
    walk text PRIMARY KEY,
    cursor text NOT NULL DEFAULT '',
    walk_min timestamptz,
    walk_max timestamptz,
    through timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
