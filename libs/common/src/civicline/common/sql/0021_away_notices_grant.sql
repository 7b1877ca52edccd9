-- The services connect as civicline_writer in deployments (0005); the away-notice claims of
-- 0020 came after that migration's grants.
GRANT SELECT, INSERT, UPDATE, DELETE ON away_notices TO civicline_writer;
