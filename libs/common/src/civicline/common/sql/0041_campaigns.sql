-- Broadcast campaigns (README "Broadcasts"): the campaign, its uploaded recipient list, one row
-- per recipient (the idempotency record: each recipient is sent at most once per campaign) and
-- the unique citizens reached by business-initiated messages (Meta's messaging tier).
CREATE TABLE campaigns (
    id              uuid        PRIMARY KEY,
    name            text        NOT NULL,
    phone_number_id text        NOT NULL,
    spec            jsonb       NOT NULL,  -- template, languages, parameters, audience
    state           text        NOT NULL CHECK (state IN
                    ('draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled')),
    send_at         timestamptz,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    -- Expansion progress: the audience source being walked (an index into the spec's topics,
    -- then the uploaded list) and the last citizen taken from it.
    cursor_source   integer     NOT NULL DEFAULT 0,
    cursor_citizen  text        NOT NULL DEFAULT '',
    expanded        boolean     NOT NULL DEFAULT false
);
CREATE INDEX campaigns_active_idx ON campaigns (send_at) WHERE state IN ('scheduled', 'running');

CREATE TABLE campaign_list (
    campaign_id uuid NOT NULL REFERENCES campaigns (id),
    wa_id       text NOT NULL,
    language    text,
    PRIMARY KEY (campaign_id, wa_id)
);

CREATE TABLE campaign_recipients (
    campaign_id uuid        NOT NULL REFERENCES campaigns (id),
    wa_id       text        NOT NULL,
    via_topic   text,        -- the topic that put them in the audience; NULL: the uploaded list
    language    text        NOT NULL,  -- the template language chosen for them
    -- queued -> claimed (a sender will call Meta soon) -> sending (the call is being made)
    -- -> sent -> delivered -> read; or failed, in_doubt, skipped, cancelled.
    state       text        NOT NULL CHECK (state IN ('queued', 'claimed', 'sending', 'sent',
                            'delivered', 'read', 'failed', 'in_doubt', 'skipped', 'cancelled')),
    reason      text,        -- why skipped (opted_out, unsubscribed)
    claimed_by  text,
    claimed_at  timestamptz,
    wamid       text,
    error_code  integer,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, wa_id)
);
-- Statuses are joined to recipients by the wamid Meta returned for the send.
CREATE UNIQUE INDEX campaign_recipients_wamid_idx ON campaign_recipients (wamid)
    WHERE wamid IS NOT NULL;
-- Small: only the rows not yet settled, to tell when a campaign is done and whether a status
-- may be about a send whose wamid is still being recorded.
CREATE INDEX campaign_recipients_open_idx ON campaign_recipients (campaign_id)
    WHERE state IN ('queued', 'claimed', 'sending');
CREATE INDEX campaign_recipients_sending_idx ON campaign_recipients (wa_id)
    WHERE state = 'sending';

CREATE TABLE messaging_reach (
    citizen      text        PRIMARY KEY,
    last_sent_at timestamptz NOT NULL
);
CREATE INDEX messaging_reach_recent_idx ON messaging_reach (last_sent_at);

GRANT SELECT, INSERT, UPDATE ON campaigns, campaign_list, campaign_recipients, messaging_reach
    TO civicline_writer;
