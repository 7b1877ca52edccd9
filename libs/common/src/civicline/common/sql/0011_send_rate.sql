-- The Graph API send schedule per business number, shared by every responder replica: the
-- next free send slot (a GCRA "theoretical arrival time") and how much Meta asked us to slow
-- down (a multiplier of the send interval, decaying back to 1 after throttling errors).
CREATE TABLE send_rate (
    phone_number_id text             PRIMARY KEY,
    next_slot       timestamptz      NOT NULL DEFAULT now(),
    slowdown        double precision NOT NULL DEFAULT 1 CHECK (slowdown >= 1),
    slowed_at       timestamptz
);
GRANT SELECT, INSERT, UPDATE ON send_rate TO civicline_writer;
