-- "Revoking is for good" (0030), now enforced: a token may only go from live to revoked. The
-- services' role may revoke (UPDATE revoked_at), so before this a stolen service credential
-- could clear revoked_at and bring a revoked auditor's token back to life; nor may anyone
-- delete a token (the access events name it).
CREATE FUNCTION audit_api_token_revoke_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
       AND NEW.token_id = OLD.token_id AND NEW.name = OLD.name AND NEW.role = OLD.role
       AND NEW.token_hash = OLD.token_hash AND NEW.created_at = OLD.created_at THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_api_token: only revoking a live token is allowed (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_api_token_revoke_only
    BEFORE UPDATE OR DELETE ON audit_api_token
    FOR EACH ROW EXECUTE FUNCTION audit_api_token_revoke_only();
CREATE TRIGGER audit_api_token_refuse_truncate
    BEFORE TRUNCATE ON audit_api_token
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
ALTER TABLE audit_api_token ENABLE ALWAYS TRIGGER audit_api_token_revoke_only;
ALTER TABLE audit_api_token ENABLE ALWAYS TRIGGER audit_api_token_refuse_truncate;
