-- The audit log becomes a verifiable Merkle log (docs/audit-log.md): every row carries its
-- RFC 6962 leaf hash, perfect subtree hashes are kept at every fourth level so a proof reads
-- O(log n) rows, the tree's right edge lives in the log-state row next to next_seq, and signed
-- tree heads (C2SP checkpoints) are kept in audit_tree_head. Every one of these tables refuses
-- UPDATE/DELETE/TRUNCATE by trigger, and the triggers fire ALWAYS: ordinary triggers are
-- skipped under session_replication_role = replica.

-- audit_leaf_hash(row): SHA-256(0x00 || canonical bytes, encoding version 1), the same bytes
-- civicline.audit.canonical builds. An auditor can recompute any leaf in psql with it.
CREATE FUNCTION audit_text_bytes(value text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT int4send(octet_length(convert_to(value, 'UTF8'))) || convert_to(value, 'UTF8')
$$;

CREATE FUNCTION audit_micros_bytes(instant timestamptz) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS $$
    -- extract(epoch ...) is numeric (exact) since PostgreSQL 14.
    SELECT int8send((extract(epoch FROM instant) * 1000000)::bigint)
$$;

ALTER TABLE audit_log ADD COLUMN leaf_hash bytea CHECK (octet_length(leaf_hash) = 32);

CREATE FUNCTION audit_leaf_hash(entry audit_log) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(
        '\x00'::bytea                                  -- RFC 6962 leaf prefix
        || '\x01'::bytea                               -- encoding version
        || int8send(entry.seq)
        || uuid_send(entry.event_id)
        || audit_text_bytes(entry.kind)
        || audit_micros_bytes(entry.occurred_at)
        || audit_micros_bytes(entry.recorded_at)
        || audit_text_bytes(entry.correlation_id)
        || int4send(entry.schema_version)
        || audit_text_bytes(entry.payload::text)
        || CASE WHEN entry.raw_body IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || sha256(entry.raw_body) END
        || CASE WHEN entry.signature IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || audit_text_bytes(entry.signature) END)
$$;

-- Rows written before this migration get their leaf hash here, once. Adding derived data is
-- the one change the append-only rule lets a migration (run by the owner) make.
ALTER TABLE audit_log DISABLE TRIGGER audit_log_refuse_update_delete;
UPDATE audit_log SET leaf_hash = audit_leaf_hash(audit_log);
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_update_delete;
ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_truncate;
ALTER TABLE audit_log ALTER COLUMN leaf_hash SET NOT NULL;

-- tree_size leaves are folded into frontier (the right edge: one hash per set bit of
-- tree_size, largest subtree first). The writer catches tree_size up to next_seq under the
-- same FOR UPDATE that numbers a batch (it lags only for rows from before this migration).
ALTER TABLE audit_log_state
    ADD COLUMN tree_size bigint NOT NULL DEFAULT 0 CHECK (tree_size >= 0),
    ADD COLUMN frontier  bytea  NOT NULL DEFAULT '\x'::bytea,
    ADD CHECK (tree_size <= next_seq);

CREATE FUNCTION audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE FUNCTION audit_log_state_forward_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit_log_state: % is refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.next_seq < OLD.next_seq OR NEW.tree_size < OLD.tree_size THEN
        RAISE EXCEPTION 'audit_log_state only moves forward'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_log_state_forward_only
    BEFORE UPDATE OR DELETE ON audit_log_state
    FOR EACH ROW EXECUTE FUNCTION audit_log_state_forward_only();
CREATE TRIGGER audit_log_state_refuse_truncate
    BEFORE TRUNCATE ON audit_log_state
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_state_forward_only();
ALTER TABLE audit_log_state ENABLE ALWAYS TRIGGER audit_log_state_forward_only;
ALTER TABLE audit_log_state ENABLE ALWAYS TRIGGER audit_log_state_refuse_truncate;

-- The hash of the perfect subtree of 2^level leaves starting at start_seq, for every level
-- that is a positive multiple of 4 (1/15 of a row per leaf): any perfect subtree hash is then
-- at most 8 stored hashes away, so a proof reads O(log n) rows.
CREATE TABLE audit_subtree (
    level     smallint NOT NULL CHECK (level > 0 AND level % 4 = 0),
    start_seq bigint   NOT NULL CHECK (start_seq >= 0),
    hash      bytea    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, start_seq)
);

CREATE TRIGGER audit_subtree_refuse_update_delete
    BEFORE UPDATE OR DELETE ON audit_subtree
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_subtree_refuse_truncate
    BEFORE TRUNCATE ON audit_subtree
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_subtree ENABLE ALWAYS TRIGGER audit_subtree_refuse_update_delete;
ALTER TABLE audit_subtree ENABLE ALWAYS TRIGGER audit_subtree_refuse_truncate;

-- Signed tree heads: the C2SP checkpoint exactly as signed and published, and its parts.
CREATE TABLE audit_tree_head (
    tree_size  bigint      PRIMARY KEY CHECK (tree_size > 0),
    root_hash  bytea       NOT NULL CHECK (octet_length(root_hash) = 32),
    signed_at  timestamptz NOT NULL,
    checkpoint text        NOT NULL
);

CREATE TRIGGER audit_tree_head_refuse_update_delete
    BEFORE UPDATE OR DELETE ON audit_tree_head
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_tree_head_refuse_truncate
    BEFORE TRUNCATE ON audit_tree_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_tree_head ENABLE ALWAYS TRIGGER audit_tree_head_refuse_update_delete;
ALTER TABLE audit_tree_head ENABLE ALWAYS TRIGGER audit_tree_head_refuse_truncate;
