//! kaching: a ClickBank Instant Notification receiver.

pub mod ins;
