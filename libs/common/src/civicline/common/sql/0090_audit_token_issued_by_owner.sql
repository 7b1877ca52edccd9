-- Issuing a query API token is the owner's act, as retiring a month is: until now every
-- service's role (civicline_writer) could INSERT one, so a stolen service credential could
-- mint itself an auditor's token and read the whole log over the API. The writer still reads
-- tokens (the services check them) and may still revoke one (cutting a token off is never the
-- harm; 0080 keeps a revocation for good).
REVOKE INSERT ON audit_api_token FROM civicline_writer;
