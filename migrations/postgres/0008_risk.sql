-- The refund-risk score (src/risk): the models `kaching risk train` fits,
-- and each sale's score at the time it was received.
CREATE TABLE risk_models (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trained_at TIMESTAMPTZ NOT NULL,
    data_from  TIMESTAMPTZ NOT NULL,
    data_to    TIMESTAMPTZ NOT NULL,
    sales      BIGINT      NOT NULL,
    refunds    BIGINT      NOT NULL,
    model      TEXT        NOT NULL,
    evaluation TEXT        NOT NULL
);
COMMENT ON TABLE risk_models IS 'refund-risk models, newest in force; never personal data (feature values are products, affiliates, sources, countries, payment methods, bands)';
COMMENT ON COLUMN risk_models.data_from IS 'the oldest matured sale it learned from';
COMMENT ON COLUMN risk_models.data_to IS 'the newest matured sale it learned from';
COMMENT ON COLUMN risk_models.model IS 'JSON: columns (feature, value), weights, intercept, window_days, base_rate';
COMMENT ON COLUMN risk_models.evaluation IS 'JSON: the time-based holdout: AUC, log-loss and calibration of the model and of two baselines';

ALTER TABLE notifications ADD COLUMN refund_risk DOUBLE PRECISION;
COMMENT ON COLUMN notifications.refund_risk IS 'a SALE''s P(refund within the window) from the model in force when it was received; NULL without a model';
