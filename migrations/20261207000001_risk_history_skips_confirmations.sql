-- risk_history records the score as a step function: a row per change. Its trigger fired on
-- every UPDATE of risk_scores, including the live scorer's confirmations (confirmed_at only,
-- one per subject every few seconds), and each of those rewrote an identical history row: a
-- dead tuple per confirmation, table bloat and WAL for nothing. Now an update reaches the
-- history only when something the history keeps has changed; inserts and real changes land as
-- before. Same mode as before (origin only: see 20261204000001).
DROP TRIGGER risk_scores_history ON public.risk_scores;
CREATE TRIGGER risk_scores_history_ins AFTER INSERT ON public.risk_scores
    FOR EACH ROW WHEN (NEW.subject_kind = 'appliance')
    EXECUTE FUNCTION public.shadowsteer_risk_history();
CREATE TRIGGER risk_scores_history_upd AFTER UPDATE ON public.risk_scores
    FOR EACH ROW WHEN (NEW.subject_kind = 'appliance' AND
                       (OLD.score, OLD.score_low, OLD.score_high, OLD.model_version, OLD.computed_at)
                       IS DISTINCT FROM
                       (NEW.score, NEW.score_low, NEW.score_high, NEW.model_version, NEW.computed_at))
    EXECUTE FUNCTION public.shadowsteer_risk_history();
