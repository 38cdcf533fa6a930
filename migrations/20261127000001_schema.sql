-- shadowsteer schema, version 1.
--
-- Replication rule: every table carries `region`, the region that owns (writes) the row, as the
-- first column of its primary key. Each region's publication filters `WHERE (region = '<self>')`;
-- PG15 row filters on UPDATE/DELETE may only use replica-identity columns, hence the key. Nothing
-- ever updates `region`: moving ownership is insert-new + delete-old.
--
-- Foreign keys guard local writes (CLI, agents, API). A logical-replication apply worker runs with
-- session_replication_role = replica, which skips foreign-key triggers, so a replicated row that
-- arrives before the row it references does not stop the subscription. Time-series tables have no
-- foreign keys: a per-row check would halve ingestion speed, and telemetry of a removed appliance
-- is history the risk model still learns from (retention prunes it).

-- Regions known to this database. Writer: the inventory commands of the owning region.
CREATE TABLE regions (
    region      text        PRIMARY KEY
                            CHECK (region ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- VPN appliances. Writer: inventory commands and the admin API of the owning region.
CREATE TABLE appliances (
    region         text        NOT NULL REFERENCES regions (region),
    id             text        NOT NULL
                               CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    endpoint_ip    inet        NOT NULL CHECK (masklen(endpoint_ip) = CASE family(endpoint_ip) WHEN 4 THEN 32 ELSE 128 END),
    endpoint_port  integer     NOT NULL CHECK (endpoint_port BETWEEN 1 AND 65535),
    -- WireGuard public key, base64 of 32 bytes.
    public_key     text        NOT NULL CHECK (public_key ~ '^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$'),
    state          text        NOT NULL DEFAULT 'active'
                               CHECK (state IN ('active', 'draining', 'down')),
    -- Relative capacity, used to weight the service name's answers.
    capacity       integer     NOT NULL DEFAULT 100 CHECK (capacity BETWEEN 1 AND 1000000),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, id),
    UNIQUE (id),
    UNIQUE (endpoint_ip, endpoint_port)
);

-- Health time series, one row per appliance per report. Writer: the appliance's agent.
CREATE TABLE appliance_health (
    region              text             NOT NULL,
    appliance_id        text             NOT NULL,
    ts                  timestamptz      NOT NULL,
    cpu                 double precision NOT NULL CHECK (cpu BETWEEN 0 AND 1),
    mem                 double precision NOT NULL CHECK (mem BETWEEN 0 AND 1),
    bw_in_bps           bigint           NOT NULL CHECK (bw_in_bps >= 0),
    bw_out_bps          bigint           NOT NULL CHECK (bw_out_bps >= 0),
    -- Share of the appliance's capacity in use.
    bw_util             double precision NOT NULL CHECK (bw_util BETWEEN 0 AND 1),
    sessions            integer          NOT NULL CHECK (sessions >= 0),
    handshake_failures  integer          NOT NULL CHECK (handshake_failures >= 0),
    packets_dropped     bigint           NOT NULL CHECK (packets_dropped >= 0),
    PRIMARY KEY (region, appliance_id, ts)
);
-- The scorer reads "the last N seconds of appliance X": served by the primary key.
-- Retention scans by time.
CREATE INDEX appliance_health_ts ON appliance_health USING brin (ts);

-- Path measurements. `src` is the measuring appliance; `dst` an appliance or a client.
-- Writer: the measuring appliance's agent (or the steering server for client reports).
CREATE TABLE path_probes (
    region      text             NOT NULL,
    src         text             NOT NULL,
    dst_kind    text             NOT NULL CHECK (dst_kind IN ('appliance', 'client')),
    dst         text             NOT NULL,
    ts          timestamptz      NOT NULL,
    rtt_ms      double precision CHECK (rtt_ms >= 0),
    jitter_ms   double precision CHECK (jitter_ms >= 0),
    loss        double precision NOT NULL CHECK (loss BETWEEN 0 AND 1),
    -- Probes sent in the window the row summarises.
    samples     integer          NOT NULL CHECK (samples >= 0),
    PRIMARY KEY (region, src, dst_kind, dst, ts)
);
CREATE INDEX path_probes_dst ON path_probes (dst_kind, dst, ts);
CREATE INDEX path_probes_ts ON path_probes USING brin (ts);

-- VPN clients. The owning region is the primary appliance's region.
-- Writer: inventory commands and the admin API of that region.
CREATE TABLE clients (
    region            text        NOT NULL REFERENCES regions (region),
    id                text        NOT NULL
                                  CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    public_key        text        NOT NULL CHECK (public_key ~ '^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$'),
    tunnel_ip         inet        NOT NULL CHECK (masklen(tunnel_ip) = CASE family(tunnel_ip) WHEN 4 THEN 32 ELSE 128 END),
    -- Stable 24-bit index every appliance uses for this client's WireGuard sessions.
    peer_index        integer     NOT NULL CHECK (peer_index BETWEEN 1 AND 16777215),
    primary_appliance text        NOT NULL REFERENCES appliances (id) ON DELETE RESTRICT,
    shadow_appliance  text        NOT NULL REFERENCES appliances (id) ON DELETE RESTRICT,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, id),
    UNIQUE (id),
    UNIQUE (public_key),
    UNIQUE (tunnel_ip),
    UNIQUE (peer_index),
    CHECK (primary_appliance <> shadow_appliance)
);
CREATE INDEX clients_primary ON clients (primary_appliance);
CREATE INDEX clients_shadow ON clients (shadow_appliance);

-- Shadowed session state: the control state a shadow needs to take a session over.
-- One row per client per region; the holder with the highest epoch owns the session.
-- Writer: the holding appliance's agent (deltas at events, never per packet).
CREATE TABLE session_state (
    region               text        NOT NULL,
    client_id            text        NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    holder               text        NOT NULL REFERENCES appliances (id) ON DELETE CASCADE,
    role                 text        NOT NULL CHECK (role IN ('primary', 'shadow')),
    -- Fencing token: a takeover increments it; a lower epoch never overrides a higher one.
    epoch                bigint      NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    endpoint_ip          inet,
    endpoint_port        integer     CHECK (endpoint_port BETWEEN 1 AND 65535),
    peer_index           integer     NOT NULL CHECK (peer_index BETWEEN 1 AND 16777215),
    -- Last receiver index the holder chose (u32: upper 24 bits = peer_index).
    receiver_index       bigint      CHECK (receiver_index BETWEEN 0 AND 4294967295),
    last_handshake_at    timestamptz,
    tx_packets           bigint      NOT NULL DEFAULT 0 CHECK (tx_packets >= 0),
    rx_packets           bigint      NOT NULL DEFAULT 0 CHECK (rx_packets >= 0),
    tx_bytes             bigint      NOT NULL DEFAULT 0 CHECK (tx_bytes >= 0),
    rx_bytes             bigint      NOT NULL DEFAULT 0 CHECK (rx_bytes >= 0),
    -- Flow / NAT entries the shadow needs to keep existing flows working (small JSON array).
    flows                jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(flows) = 'array'),
    -- Encrypted key material (e.g. a preshared key); never clear text.
    sealed_secrets       bytea,
    version              bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, client_id),
    CHECK ((endpoint_ip IS NULL) = (endpoint_port IS NULL))
);
CREATE INDEX session_state_holder ON session_state (holder);

-- Current risk per appliance and per path. Writer: the steering servers of the subject's region
-- (only when a score moves by more than an epsilon).
CREATE TABLE risk_scores (
    region         text             NOT NULL,
    subject_kind   text             NOT NULL CHECK (subject_kind IN ('appliance', 'path')),
    -- An appliance id, or "src>dst" for a path.
    subject        text             NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    score          double precision NOT NULL CHECK (score BETWEEN 0 AND 1),
    score_low      double precision NOT NULL CHECK (score_low BETWEEN 0 AND 1),
    score_high     double precision NOT NULL CHECK (score_high BETWEEN 0 AND 1),
    model_version  text             NOT NULL CHECK (length(model_version) BETWEEN 1 AND 200),
    computed_at    timestamptz      NOT NULL,
    PRIMARY KEY (region, subject_kind, subject),
    CHECK (score_low <= score AND score <= score_high)
);

-- Operator-entered external risk. Scope: one appliance, or every appliance of a region.
-- Writer: inventory commands and the admin API of the region the advisory is stored in.
CREATE TABLE advisories (
    region        text             NOT NULL REFERENCES regions (region),
    id            uuid             NOT NULL DEFAULT gen_random_uuid(),
    appliance_id  text             REFERENCES appliances (id) ON DELETE CASCADE,
    scope_region  text             REFERENCES regions (region),
    kind          text             NOT NULL
                                   CHECK (kind IN ('geopolitical', 'environmental', 'maintenance', 'operational')),
    risk          double precision NOT NULL CHECK (risk BETWEEN 0 AND 1),
    starts_at     timestamptz      NOT NULL,
    ends_at       timestamptz,
    note          text             NOT NULL DEFAULT '' CHECK (length(note) <= 1000),
    created_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (region, id),
    UNIQUE (id),
    CHECK ((appliance_id IS NULL) <> (scope_region IS NULL)),
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX advisories_appliance ON advisories (appliance_id);

-- Failures per appliance: labels for training and evaluation.
-- Writer: the agent or steering server that observed it, or an import.
CREATE TABLE failure_events (
    region         text        NOT NULL,
    appliance_id   text        NOT NULL,
    started_at     timestamptz NOT NULL,
    ended_at       timestamptz,
    kind           text        NOT NULL DEFAULT 'unknown' CHECK (length(kind) BETWEEN 1 AND 64),
    -- Whether the failure had observable precursors; NULL when unknown.
    has_precursor  boolean,
    note           text        NOT NULL DEFAULT '' CHECK (length(note) <= 1000),
    PRIMARY KEY (region, appliance_id, started_at),
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX failure_events_started ON failure_events (started_at);

-- Audit trail of every change of a client's answer. Writer: the steering servers of the region.
CREATE TABLE steering_decisions (
    region          text             NOT NULL,
    id              bigint           GENERATED ALWAYS AS IDENTITY,
    decided_at      timestamptz      NOT NULL DEFAULT now(),
    client_id       text             NOT NULL,
    from_appliance  text,
    to_appliance    text             NOT NULL,
    reason          text             NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    primary_risk    double precision CHECK (primary_risk BETWEEN 0 AND 1),
    shadow_risk     double precision CHECK (shadow_risk BETWEEN 0 AND 1),
    server          text             NOT NULL DEFAULT '' CHECK (length(server) <= 200),
    PRIMARY KEY (region, id)
);
CREATE INDEX steering_decisions_client ON steering_decisions (client_id, decided_at);
CREATE INDEX steering_decisions_ts ON steering_decisions USING brin (decided_at);

-- Admin API tokens: only a SHA-256 hash of each token is stored.
-- Writer: the admin commands of the owning region.
CREATE TABLE api_tokens (
    region      text        NOT NULL,
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    token_hash  bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    scope       text        NOT NULL DEFAULT 'admin' CHECK (scope IN ('read', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    PRIMARY KEY (region, id),
    UNIQUE (id)
);

-- Change notifications for the steering server and the agents.
-- SET search_path: a logical-replication apply worker runs with an empty search_path.
-- The payload stays far below NOTIFY's 8000-byte limit: ids are at most 63 characters.
CREATE FUNCTION public.shadowsteer_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    row_data jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_data := to_jsonb(OLD);
    ELSE
        row_data := to_jsonb(NEW);
    END IF;
    PERFORM pg_catalog.pg_notify('shadowsteer', pg_catalog.json_build_object(
        'table', TG_TABLE_NAME,
        'op', pg_catalog.lower(TG_OP),
        'region', row_data ->> 'region',
        'key', row_data ->> TG_ARGV[0])::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER appliances_notify AFTER INSERT OR UPDATE OR DELETE ON public.appliances
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_notify('id');
CREATE TRIGGER clients_notify AFTER INSERT OR UPDATE OR DELETE ON public.clients
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_notify('id');
CREATE TRIGGER risk_scores_notify AFTER INSERT OR UPDATE OR DELETE ON public.risk_scores
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_notify('subject');
CREATE TRIGGER advisories_notify AFTER INSERT OR UPDATE OR DELETE ON public.advisories
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_notify('id');
-- Sessions change at every checkpoint; only a change of holder or epoch is news.
CREATE TRIGGER session_state_notify_ins_del AFTER INSERT OR DELETE ON public.session_state
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_notify('client_id');
CREATE TRIGGER session_state_notify_holder AFTER UPDATE ON public.session_state
    FOR EACH ROW WHEN (OLD.holder IS DISTINCT FROM NEW.holder OR OLD.epoch IS DISTINCT FROM NEW.epoch)
    EXECUTE FUNCTION public.shadowsteer_notify('client_id');

-- Replicated rows notify too.
ALTER TABLE public.appliances ENABLE ALWAYS TRIGGER appliances_notify;
ALTER TABLE public.clients ENABLE ALWAYS TRIGGER clients_notify;
ALTER TABLE public.risk_scores ENABLE ALWAYS TRIGGER risk_scores_notify;
ALTER TABLE public.advisories ENABLE ALWAYS TRIGGER advisories_notify;
ALTER TABLE public.session_state ENABLE ALWAYS TRIGGER session_state_notify_ins_del;
ALTER TABLE public.session_state ENABLE ALWAYS TRIGGER session_state_notify_holder;

-- Retention: delete at most `batch_limit` rows older than `older_than` from one time-series
-- table and return how many went. Callers repeat until it returns less than the limit, so no
-- single transaction holds locks on a large delete.
CREATE FUNCTION public.shadowsteer_prune(tbl text, older_than timestamptz, batch_limit integer)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    ts_column text;
    deleted bigint;
BEGIN
    IF batch_limit IS NULL OR batch_limit < 1 OR batch_limit > 1000000 THEN
        RAISE EXCEPTION 'batch_limit must be between 1 and 1000000, got %', batch_limit;
    END IF;
    ts_column := CASE tbl
        WHEN 'appliance_health' THEN 'ts'
        WHEN 'path_probes' THEN 'ts'
        WHEN 'steering_decisions' THEN 'decided_at'
        WHEN 'failure_events' THEN 'started_at'
        ELSE NULL END;
    IF ts_column IS NULL THEN
        RAISE EXCEPTION 'table % has no retention policy', tbl;
    END IF;
    EXECUTE pg_catalog.format(
        'DELETE FROM public.%I WHERE ctid = ANY (ARRAY(SELECT ctid FROM public.%I WHERE %I < $1 LIMIT $2))',
        tbl, tbl, ts_column)
        USING older_than, batch_limit;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;
