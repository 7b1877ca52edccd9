-- Roles (cluster-wide, so created only if missing: many databases share one server) and this
-- database's grants. Deployments run migrations as civicline_owner and the services as
-- civicline_writer; auditors connect as civicline_auditor. See docs/audit-log.md.
--   owner   owns the tables (and so could disable triggers: keep it for migrations only)
--   writer  audit tables: SELECT and INSERT, UPDATE only on the log-state row;
--           router and responder state: SELECT, INSERT, UPDATE, DELETE
--   auditor SELECT on the audit tables, nothing else
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['civicline_owner', 'civicline_writer', 'civicline_auditor']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- a migration of another database created it a moment ago
            END;
        END IF;
    END LOOP;
    IF pg_has_role(current_user, 'civicline_owner', 'MEMBER') THEN
        ALTER TABLE audit_log OWNER TO civicline_owner;
        ALTER TABLE audit_log_state OWNER TO civicline_owner;
        ALTER TABLE audit_subtree OWNER TO civicline_owner;
        ALTER TABLE audit_tree_head OWNER TO civicline_owner;
        ALTER TABLE router_seen OWNER TO civicline_owner;
        ALTER TABLE contacts OWNER TO civicline_owner;
        ALTER TABLE reply_ledger OWNER TO civicline_owner;
    ELSE
        RAISE NOTICE 'tables stay owned by %: it is not a member of civicline_owner', current_user;
    END IF;
    EXECUTE format(
        'GRANT CONNECT ON DATABASE %I TO civicline_writer, civicline_auditor',
        current_database());
END
$$;

REVOKE ALL ON audit_log, audit_log_state, audit_subtree, audit_tree_head FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO civicline_writer, civicline_auditor;

GRANT SELECT, INSERT ON audit_log, audit_subtree, audit_tree_head TO civicline_writer;
GRANT SELECT, UPDATE ON audit_log_state TO civicline_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON router_seen, contacts, reply_ledger TO civicline_writer;
GRANT SELECT ON schema_migrations TO civicline_writer, civicline_auditor;

GRANT SELECT ON audit_log, audit_log_state, audit_subtree, audit_tree_head TO civicline_auditor;
