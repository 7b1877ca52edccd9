-- Citizens' privacy in the audit log and the auditors' API (docs/audit-log.md, encoding v2):
--   * new rows name the citizens they are about by keyed pseudonym (HMAC-SHA256 of the wa_id),
--     in `subjects`, never by number;
--   * their payload and raw webhook body are sealed (AES-256-GCM) with a key derived from those
--     citizens' data keys, kept wrapped in audit_subject_key: destroying one key erases a
--     citizen's words while every leaf (which hashes the ciphertext) still verifies;
--   * `intent` is kept in clear beside the kind so auditors can filter on it;
--   * bearer tokens of the query API, stored as SHA-256 hashes.
-- Rows written before this migration stay encoding v1 and verify as before.

ALTER TABLE audit_log
    ADD COLUMN leaf_version   smallint NOT NULL DEFAULT 1 CHECK (leaf_version IN (1, 2)),
    ADD COLUMN intent         text,
    ADD COLUMN subjects       bytea[],
    ADD COLUMN key_ids        uuid[],
    ADD COLUMN sealed_payload bytea,
    ALTER COLUMN payload DROP NOT NULL,
    ADD CONSTRAINT audit_log_payload_xor_sealed
        CHECK ((payload IS NULL) <> (sealed_payload IS NULL)),
    ADD CONSTRAINT audit_log_v2_fields
        CHECK (leaf_version = 1 OR (subjects IS NOT NULL AND key_ids IS NOT NULL));

-- What the query API filters on, each ordered by seq for keyset pagination.
CREATE INDEX audit_log_subjects_idx ON audit_log USING gin (subjects);
-- (correlation_id, seq) serves what 0001's (correlation_id) did, and pages in seq order.
DROP INDEX audit_log_correlation_idx;
CREATE INDEX audit_log_correlation_seq_idx ON audit_log (correlation_id, seq);
CREATE INDEX audit_log_kind_seq_idx ON audit_log (kind, seq);
CREATE INDEX audit_log_intent_seq_idx ON audit_log (intent, seq) WHERE intent IS NOT NULL;
CREATE INDEX audit_log_occurred_idx ON audit_log (occurred_at);
CREATE INDEX audit_log_recorded_idx ON audit_log (recorded_at);

CREATE FUNCTION audit_bytes_concat(parts bytea[]) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT int4send(coalesce(cardinality(parts), 0))
        || coalesce((SELECT string_agg(p, ''::bytea ORDER BY o)
                     FROM unnest(parts) WITH ORDINALITY AS u(p, o)), ''::bytea)
$$;

-- Encoding v1 as in 0004; v2 as docs/audit-log.md specifies and civicline.audit.canonical builds.
CREATE OR REPLACE FUNCTION audit_leaf_hash(entry audit_log) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(
        '\x00'::bytea                                  -- RFC 6962 leaf prefix
        || substring(int2send(entry.leaf_version) FROM 2 FOR 1)   -- encoding version, u8
        || int8send(entry.seq)
        || uuid_send(entry.event_id)
        || audit_text_bytes(entry.kind)
        || audit_micros_bytes(entry.occurred_at)
        || audit_micros_bytes(entry.recorded_at)
        || audit_text_bytes(entry.correlation_id)
        || int4send(entry.schema_version)
        || CASE WHEN entry.leaf_version = 1 THEN
               audit_text_bytes(entry.payload::text)
           ELSE
               CASE WHEN entry.intent IS NULL THEN '\x00'::bytea
                    ELSE '\x01'::bytea || audit_text_bytes(entry.intent) END
               || audit_bytes_concat(entry.subjects)
               || audit_bytes_concat(
                      ARRAY(SELECT uuid_send(k) FROM unnest(entry.key_ids) WITH ORDINALITY
                            AS u(k, o) ORDER BY o))
               || CASE WHEN entry.sealed_payload IS NULL
                       THEN '\x00'::bytea || audit_text_bytes(entry.payload::text)
                       ELSE '\x01'::bytea || sha256(entry.sealed_payload) END
           END
        || CASE WHEN entry.raw_body IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || sha256(entry.raw_body) END
        || CASE WHEN entry.signature IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || audit_text_bytes(entry.signature) END)
$$;

-- One data key per citizen (per pseudonym), AES-GCM-wrapped by the master key. Erasing sets
-- wrapped_key to NULL: the only change allowed; rows are never deleted, so the log's key ids
-- keep pointing somewhere that says when the key was destroyed. A citizen who writes again
-- after an erasure gets a new key.
CREATE TABLE audit_subject_key (
    key_id      uuid        PRIMARY KEY,
    subject     bytea       NOT NULL CHECK (octet_length(subject) = 32),
    wrapped_key bytea,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    erased_at   timestamptz,
    CHECK ((wrapped_key IS NULL) = (erased_at IS NOT NULL))
);
CREATE UNIQUE INDEX audit_subject_key_live_idx ON audit_subject_key (subject)
    WHERE erased_at IS NULL;

CREATE FUNCTION audit_subject_key_erase_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.wrapped_key IS NOT NULL AND NEW.wrapped_key IS NULL
       AND NEW.key_id = OLD.key_id AND NEW.subject = OLD.subject
       AND NEW.created_at = OLD.created_at AND NEW.erased_at IS NOT NULL THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_subject_key: only erasing a live key is allowed (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_subject_key_erase_only
    BEFORE UPDATE OR DELETE ON audit_subject_key
    FOR EACH ROW EXECUTE FUNCTION audit_subject_key_erase_only();
CREATE TRIGGER audit_subject_key_refuse_truncate
    BEFORE TRUNCATE ON audit_subject_key
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_subject_key ENABLE ALWAYS TRIGGER audit_subject_key_erase_only;
ALTER TABLE audit_subject_key ENABLE ALWAYS TRIGGER audit_subject_key_refuse_truncate;

-- Bearer tokens of the query API: only SHA-256(token) is stored; revoking is for good.
CREATE TABLE audit_api_token (
    token_id   uuid        PRIMARY KEY,
    name       text        NOT NULL UNIQUE CHECK (name <> ''),
    role       text        NOT NULL CHECK (role IN ('auditor', 'operator')),
    token_hash bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at timestamptz
);

DO $$
BEGIN
    IF pg_has_role(current_user, 'civicline_owner', 'MEMBER') THEN
        ALTER TABLE audit_subject_key OWNER TO civicline_owner;
        ALTER TABLE audit_api_token OWNER TO civicline_owner;
    END IF;
END
$$;

REVOKE ALL ON audit_subject_key, audit_api_token FROM PUBLIC;
GRANT SELECT, INSERT ON audit_subject_key TO civicline_writer;
GRANT UPDATE (wrapped_key, erased_at) ON audit_subject_key TO civicline_writer;
GRANT SELECT, INSERT ON audit_api_token TO civicline_writer;
GRANT UPDATE (revoked_at) ON audit_api_token TO civicline_writer;
-- The auditor role reads the log (ciphertext and pseudonyms), never the keys or the tokens.
