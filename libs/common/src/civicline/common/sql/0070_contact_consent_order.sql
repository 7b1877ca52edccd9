-- The time of each citizen's latest message that gave or withdrew consent (STOP, START, a topic
-- subscription). Meta does not guarantee the order of webhooks: a START sent before a STOP but
-- delivered after it must not undo the STOP. The router ignores a consent message older than
-- this (civicline.router.events.superseded).
ALTER TABLE contacts ADD COLUMN consent_changed_at timestamptz;

-- Citizens opted out before this column: their STOP is their latest known word.
UPDATE contacts SET consent_changed_at = opted_out_at WHERE opted_out;
