-- Which delivery of the inbound message holds a 'sending' claim. When the claim's INSERT
-- committed but its answer was lost (a network cut), the same delivery, retrying, must
-- recognise its own claim rather than call the reply in doubt.
ALTER TABLE reply_ledger ADD COLUMN claimed_by text;
