-- Reference writes notify the servers' caches of lookups by key (src/cache.rs).
--
-- Every statement that writes series, events, markets or settlements, whoever runs it (IngestService, the
-- importer, psql), sends one notification on the channel kalshi_replay_reference. PostgreSQL delivers it when the
-- transaction commits, and not at all when it rolls back, so a listener hears of exactly the committed changes.
-- Notifications of one transaction on one channel with the same payload are folded into one.

CREATE FUNCTION reference_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kalshi_replay_reference', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

-- one statement-level trigger per reference table, named <table>_notify
DO $$
DECLARE
    reference text;
BEGIN
    FOREACH reference IN ARRAY ARRAY['series', 'events', 'markets', 'settlements'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I
                            FOR EACH STATEMENT EXECUTE FUNCTION reference_changed()', reference || '_notify', reference);
    END LOOP;
END
$$;
