-- Takeover: which appliance holds a shadowed session, since when and why.
--
-- Each region writes its own row of a client's session (the primary key holds the region). The
-- holder of a session is the row with the highest (epoch, region); a takeover writes the
-- claiming appliance's own region's row with an epoch above every epoch it has seen.

ALTER TABLE public.session_state
    ADD COLUMN claimed_at   timestamptz,
    ADD COLUMN claim_reason text
        CHECK (claim_reason IN ('crash', 'predicted', 'failback', 'client')),
    ADD CONSTRAINT session_state_claim_complete
        CHECK ((claimed_at IS NULL) = (claim_reason IS NULL));

-- Fencing, enforced by the database: a write never lowers a row's epoch. (Rows of other
-- regions arrive by replication from the region that enforced this on them.)
CREATE FUNCTION public.session_state_epoch_fence() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    IF NEW.epoch < OLD.epoch THEN
        RAISE EXCEPTION 'session of client % (region %): epoch % may not replace the higher epoch %',
            OLD.client_id, OLD.region, NEW.epoch, OLD.epoch
            USING ERRCODE = 'SSE01';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER session_state_epoch_fence BEFORE UPDATE ON public.session_state
    FOR EACH ROW EXECUTE FUNCTION public.session_state_epoch_fence();

-- A claim replicated from another region is news for the agents of this one.
ALTER TABLE public.session_state ENABLE ALWAYS TRIGGER session_state_notify_holder;

-- The shadow needs the client's latest endpoint; endpoints change rarely (roaming).
CREATE TRIGGER session_state_notify_endpoint AFTER UPDATE ON public.session_state
    FOR EACH ROW WHEN (OLD.endpoint_ip IS DISTINCT FROM NEW.endpoint_ip
                       OR OLD.endpoint_port IS DISTINCT FROM NEW.endpoint_port)
    EXECUTE FUNCTION public.shadowsteer_notify('client_id');
ALTER TABLE public.session_state ENABLE ALWAYS TRIGGER session_state_notify_endpoint;

-- Agents learn predicted moves from steering decisions. The payload is the same for every row
-- of a region, and Postgres folds identical notifications of one transaction into one: a batch
-- of a thousand decisions costs one notification.
CREATE FUNCTION public.steering_decisions_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('shadowsteer', pg_catalog.json_build_object(
        'table', 'steering_decisions',
        'op', 'insert',
        'region', NEW.region,
        'key', '')::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER steering_decisions_notify AFTER INSERT ON public.steering_decisions
    FOR EACH ROW EXECUTE FUNCTION public.steering_decisions_notify();
ALTER TABLE public.steering_decisions ENABLE ALWAYS TRIGGER steering_decisions_notify;


-- Agents read every row of a client's session (one per region) to find its holder.
CREATE INDEX session_state_client ON public.session_state (client_id);
