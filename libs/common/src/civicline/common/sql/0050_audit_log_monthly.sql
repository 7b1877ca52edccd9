-- The audit log is partitioned by month of recorded_at (UTC), so a month can be vacuumed,
-- indexed, archived or detached on its own (docs/audit-log.md, "Partitions by month" and
-- "Retention").
--
-- Postgres requires every unique constraint of a partitioned table to contain the partition
-- key, so the log itself can only enforce (seq, recorded_at). What 0001's PRIMARY KEY (seq)
-- and UNIQUE (event_id) enforced moves to audit_event_id, one narrow row per event that the
-- writer inserts in the same transaction: seq and event_id stay unique across every month.
--
-- A populated log is not copied: its table becomes the partition audit_log_legacy, for
-- everything recorded up to its last row, and months start after it.

-- 1. The old table steps aside under a new name, with its index and constraint names freed
--    for the partitioned table. Its row trigger is dropped only because the partitioned
--    table's own clone replaces it when the table is attached (all in this transaction).
ALTER TABLE audit_log RENAME TO audit_log_legacy;
-- (A partition has no primary key of its own: it gets the partitioned table's, which
-- attaching builds. audit_event_id, filled below, keeps seq unique meanwhile.)
ALTER TABLE audit_log_legacy DROP CONSTRAINT audit_log_pkey;
ALTER TABLE audit_log_legacy RENAME CONSTRAINT audit_log_event_id_key TO audit_log_legacy_event_id_key;
ALTER INDEX audit_log_kind_occurred_idx RENAME TO audit_log_legacy_kind_occurred_idx;
ALTER INDEX audit_log_subjects_idx RENAME TO audit_log_legacy_subjects_idx;
ALTER INDEX audit_log_correlation_seq_idx RENAME TO audit_log_legacy_correlation_seq_idx;
ALTER INDEX audit_log_kind_seq_idx RENAME TO audit_log_legacy_kind_seq_idx;
ALTER INDEX audit_log_intent_seq_idx RENAME TO audit_log_legacy_intent_seq_idx;
ALTER INDEX audit_log_occurred_idx RENAME TO audit_log_legacy_occurred_idx;
ALTER INDEX audit_log_recorded_idx RENAME TO audit_log_legacy_recorded_idx;
DROP TRIGGER audit_log_refuse_update_delete ON audit_log_legacy;
ALTER TRIGGER audit_log_refuse_truncate ON audit_log_legacy
    RENAME TO audit_log_partition_refuse_truncate;

-- 2. The partitioned log: the same columns, defaults and CHECK constraints (same names, so a
--    partition made LIKE it attaches), the same indexes.
CREATE TABLE audit_log (
    LIKE audit_log_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (seq, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE INDEX audit_log_kind_occurred_idx ON audit_log (kind, occurred_at);
CREATE INDEX audit_log_subjects_idx ON audit_log USING gin (subjects);
CREATE INDEX audit_log_correlation_seq_idx ON audit_log (correlation_id, seq);
CREATE INDEX audit_log_kind_seq_idx ON audit_log (kind, seq);
CREATE INDEX audit_log_intent_seq_idx ON audit_log (intent, seq) WHERE intent IS NOT NULL;
CREATE INDEX audit_log_occurred_idx ON audit_log (occurred_at);
CREATE INDEX audit_log_recorded_idx ON audit_log (recorded_at);

-- Row triggers on a partitioned table are cloned onto every partition, ENABLE ALWAYS state
-- included. TRUNCATE triggers are not: each partition gets its own (step 4).
CREATE TRIGGER audit_log_refuse_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_log_refuse_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_update_delete;
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_truncate;

-- The leaf hash function takes a row of the log, so it followed the old table's rename. It is
-- re-created for the partitioned table's row type from its own definition (0030's, the one
-- statement of the encoding in SQL), and the old one dropped.
DO $$
BEGIN
    EXECUTE replace(
        pg_get_functiondef('audit_leaf_hash(audit_log_legacy)'::regprocedure),
        '(entry audit_log_legacy)', '(entry audit_log)');
END
$$;
DROP FUNCTION audit_leaf_hash(audit_log_legacy);

-- 3. One row per logged event: seq and event_id unique across every partition, and the
--    leaf hash, which stays when a month is retired (detached and archived): proofs of the
--    events kept may need the leaves of their retired neighbours, and a verification of the
--    whole log counts a retired month by its leaves.
CREATE TABLE audit_event_id (
    event_id  uuid   PRIMARY KEY,
    seq       bigint NOT NULL UNIQUE CHECK (seq >= 0),
    leaf_hash bytea  NOT NULL CHECK (octet_length(leaf_hash) = 32)
);
INSERT INTO audit_event_id (event_id, seq, leaf_hash)
SELECT event_id, seq, leaf_hash FROM audit_log_legacy;

CREATE TRIGGER audit_event_id_refuse_update_delete
    BEFORE UPDATE OR DELETE ON audit_event_id
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_event_id_refuse_truncate
    BEFORE TRUNCATE ON audit_event_id
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_event_id ENABLE ALWAYS TRIGGER audit_event_id_refuse_update_delete;
ALTER TABLE audit_event_id ENABLE ALWAYS TRIGGER audit_event_id_refuse_truncate;

-- 4. Partitions. audit_log_add_partition makes one apart and attaches it, which locks out
--    neither readers nor writers of the log, and gives it its own TRUNCATE trigger.
CREATE FUNCTION audit_log_add_partition(name text, low timestamptz, high timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TABLE %I (LIKE audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format(
        'CREATE TRIGGER audit_log_partition_refuse_truncate BEFORE TRUNCATE ON %I '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()', name);
    EXECUTE format(
        'ALTER TABLE %I ENABLE ALWAYS TRIGGER audit_log_partition_refuse_truncate', name);
    EXECUTE format(
        'ALTER TABLE audit_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        name, low, high);
END
$$;

-- audit_log_ensure_months_at(at): the partitions of at's month (UTC) and the next exist
-- afterwards; a month already made costs two catalog lookups. The owner's, for any month.
CREATE FUNCTION audit_log_ensure_months_at(at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz;
    name        text;
BEGIN
    FOR ahead IN 0..1 LOOP
        month_start := (date_trunc('month', at AT TIME ZONE 'UTC')
                        + make_interval(months => ahead)) AT TIME ZONE 'UTC';
        name := 'audit_log_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        -- Writers of several replicas may come here at once: one makes it, the rest see it.
        -- The lock is the one attaching takes anyway (readers and writers pass it), and
        -- taking a table lock also brings in the catalog changes committed while waiting.
        LOCK TABLE audit_log IN SHARE UPDATE EXCLUSIVE MODE;
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        BEGIN
            PERFORM audit_log_add_partition(
                name, month_start,
                ((month_start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC');
        EXCEPTION WHEN invalid_object_definition THEN
            -- The month lies below audit_log_legacy's bound (a clock set back): its rows
            -- are stored there, and the month's name stays free.
            RAISE NOTICE 'audit_log: % overlaps an older partition; not made', name;
        END;
    END LOOP;
END
$$;

-- audit_log_ensure_months(): this month and the next exist afterwards, by the server's clock
-- (the caller names no month, so the writer cannot have old or far-off months made). The
-- writer calls it under the log lock, right after reading that same clock, so a batch never
-- finds its month missing and each month is made a month ahead. It runs as the log's owner,
-- since the writer may not create tables; waiting for the attach lock (an ANALYZE of the
-- whole log holds it) is bounded, and a batch that times out is retried.
CREATE FUNCTION audit_log_ensure_months() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '5s' AS $$
BEGIN
    PERFORM audit_log_ensure_months_at(clock_timestamp());
END
$$;

-- Both resolve names in this schema alone, pg_temp last: a caller's temporary tables never
-- stand in for the log.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_log_ensure_months_at(timestamptz) '
                   'SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION audit_log_ensure_months() '
                   'SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION audit_log_add_partition(text, timestamptz, timestamptz) '
                   'SET search_path = %I, pg_temp', current_schema());
END
$$;

-- 5. The legacy rows, if any, become one partition up to just after the last of them; the
--    rest of that month gets a partition of its own, named for the month as every later one.
DO $$
DECLARE
    last_recorded timestamptz;
    bound         timestamptz;
    month_end     timestamptz;
BEGIN
    SELECT max(recorded_at) INTO last_recorded FROM audit_log_legacy;
    IF last_recorded IS NULL THEN
        DROP TABLE audit_log_legacy;
    ELSE
        EXECUTE format(
            'ALTER TABLE audit_log ATTACH PARTITION audit_log_legacy '
            'FOR VALUES FROM (MINVALUE) TO (%L)', last_recorded + interval '1 microsecond');
        bound := last_recorded + interval '1 microsecond';
        month_end := (date_trunc('month', last_recorded AT TIME ZONE 'UTC')
                      + interval '1 month') AT TIME ZONE 'UTC';
        IF bound < month_end THEN  -- else the last row ended its month to the microsecond
            PERFORM audit_log_add_partition(
                'audit_log_' || to_char(last_recorded AT TIME ZONE 'UTC', 'YYYY_MM'),
                bound, month_end);
        END IF;
    END IF;
END
$$;

-- 6. Owners and grants as 0005 and 0030 set them for the other audit tables. The partitions
--    and the functions that make them belong to the log's owner; the writer may call
--    audit_log_ensure_months() and nothing else of them.
DO $$
DECLARE
    partition regclass;
BEGIN
    IF pg_has_role(current_user, 'civicline_owner', 'MEMBER') THEN
        -- The owner makes each month's partition, so it may create tables here (it may
        -- already: in a deployment it owns the database).
        IF NOT has_schema_privilege('civicline_owner', current_schema(), 'CREATE') THEN
            EXECUTE format('GRANT CREATE ON SCHEMA %I TO civicline_owner', current_schema());
        END IF;
        ALTER TABLE audit_log OWNER TO civicline_owner;
        ALTER TABLE audit_event_id OWNER TO civicline_owner;
        FOR partition IN SELECT inhrelid::regclass FROM pg_inherits
                         WHERE inhparent = 'audit_log'::regclass LOOP
            EXECUTE format('ALTER TABLE %s OWNER TO civicline_owner', partition);
        END LOOP;
        ALTER FUNCTION audit_log_add_partition(text, timestamptz, timestamptz)
            OWNER TO civicline_owner;
        ALTER FUNCTION audit_log_ensure_months_at(timestamptz) OWNER TO civicline_owner;
        ALTER FUNCTION audit_log_ensure_months() OWNER TO civicline_owner;
    END IF;
END
$$;

REVOKE ALL ON audit_log, audit_event_id FROM PUBLIC;
GRANT SELECT, INSERT ON audit_log, audit_event_id TO civicline_writer;
GRANT SELECT ON audit_log, audit_event_id TO civicline_auditor;
REVOKE ALL ON FUNCTION audit_log_add_partition(text, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_log_ensure_months_at(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_log_ensure_months() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log_ensure_months() TO civicline_writer;

-- 7. This month and the next, made now, as the writer would.
SELECT audit_log_ensure_months();
