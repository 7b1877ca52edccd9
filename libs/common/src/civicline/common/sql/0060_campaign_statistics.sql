-- Fresh planner statistics for the tables a campaign's claims read.
--
-- A campaign's recipients grow from none to a whole audience within a minute, and its claims
-- are planned from statistics. Planned for the table of a few rows it was a moment before,
-- each claim of sixteen recipients read every row of the campaign and every subscription of
-- its topic, and every contact of the number (measured: 240 sends/s, Postgres using 1.5
-- cores, on a campaign of 50,000).
-- Autovacuum fixes this only at its next round (a minute by default), and not at all where
-- it is off. So the campaign driver calls this function while campaigns run: it analyses a
-- table only once a fair share of it has changed since it was last analysed (nothing extra
-- where autovacuum keeps up), and one caller at a time. SECURITY DEFINER: only a table's
-- owner may analyse it, and the services connect as civicline_writer.
CREATE FUNCTION campaign_statistics_refresh() RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    analysed text[] := ARRAY[]::text[];
    stale record;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('civicline.campaign_statistics_refresh')) THEN
        RETURN analysed;  -- another replica is at it
    END IF;
    FOR stale IN
        SELECT s.relname
        FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
        WHERE s.relid IN ('public.campaign_recipients'::regclass, 'public.subscriptions'::regclass,
                          'public.contacts'::regclass)
          AND s.n_mod_since_analyze > 1000 + 0.5 * greatest(c.reltuples, 0)
        ORDER BY s.relname
    LOOP
        EXECUTE format('ANALYZE public.%I', stale.relname);
        analysed := analysed || stale.relname::text;
    END LOOP;
    RETURN analysed;
END
$$;

REVOKE ALL ON FUNCTION campaign_statistics_refresh() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_statistics_refresh() TO civicline_writer;
