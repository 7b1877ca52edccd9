-- The append-only audit log. Every event on the bus is one row, written once (unique event id),
-- numbered by a gapless sequence kept in audit_log_state (never a SEQUENCE: a rolled-back
-- transaction would leave a gap an auditor cannot tell from a deleted row).
CREATE TABLE audit_log (
    seq            bigint      PRIMARY KEY CHECK (seq >= 0),
    event_id       uuid        NOT NULL UNIQUE,
    kind           text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    correlation_id text        NOT NULL,
    schema_version integer     NOT NULL,
    -- json, not jsonb: kept verbatim, and jsonb cannot hold the \u0000 a citizen's text may carry.
    payload        json        NOT NULL,
    -- inbound.webhook only: the exact bytes Meta sent and the X-Hub-Signature-256 header, so an
    -- auditor holding the app secret can re-check that Meta really sent them.
    raw_body       bytea,
    signature      text
);

CREATE INDEX audit_log_correlation_idx ON audit_log (correlation_id);
CREATE INDEX audit_log_kind_occurred_idx ON audit_log (kind, occurred_at);

CREATE TABLE audit_log_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_seq  bigint  NOT NULL CHECK (next_seq >= 0)
);
INSERT INTO audit_log_state (singleton, next_seq) VALUES (true, 0);

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_refuse_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_refuse_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
