//! `kind = "email"`: an email per event over SMTP (lettre), its subject and
//! bodies rendered from minijinja templates with the event as context. `to`
//! is an address or `customer` (the buyer's billing email). Transient SMTP
//! failures (4xx, connection) are retried, permanent ones (5xx) fail.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Event, Outcome};
use crate::config::{invalid, ActionSettings, ConfigError};

#[derive(Debug)]
enum To {
    Fixed(Mailbox),
    Customer,
}

pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: To,
    reply_to: Option<Mailbox>,
    /// Templates named subject, body and (optional) html_body.
    templates: minijinja::Environment<'static>,
    html: bool,
    /// The action's name, part of the stable Message-ID.
    name: String,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

fn mailbox(value: &str, key: String) -> Result<Mailbox, ConfigError> {
    value
        .parse()
        .map_err(|e| invalid(key, format!("`{value}` is not an email address: {e}")))
}

impl Email {
    /// Who gets the mail: the buyer, or the fixed address.
    pub fn recipient(&self) -> String {
        match &self.to {
            To::Customer => "the buyer".to_owned(),
            To::Fixed(m) => m.email.to_string(),
        }
    }

    pub fn from_settings(
        s: &ActionSettings,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Self, ConfigError> {
        let required = |v: &Option<String>, k: &str| {
            v.clone()
                .ok_or_else(|| invalid(key(k), "is required for kind = \"email\""))
        };
        let url = s
            .smtp_url
            .as_ref()
            .ok_or_else(|| invalid(key("smtp_url"), "is required for kind = \"email\""))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
            .map_err(|e| invalid(key("smtp_url"), format!("{url:?}: {e}")))?
            .timeout(Some(std::time::Duration::from_millis(s.timeout_ms)))
            .build();
        let from = mailbox(&required(&s.from, "from")?, key("from"))?;
        let to = match required(&s.to, "to")?.as_str() {
            "customer" if !s.includes_customer() => return Err(invalid(
                key("to"),
                "\"customer\" needs the customer's data: include_customer = false leaves it out",
            )),
            "customer" => To::Customer,
            addr => To::Fixed(mailbox(addr, key("to"))?),
        };
        let reply_to = s
            .reply_to
            .as_deref()
            .map(|r| mailbox(r, key("reply_to")))
            .transpose()?;
        let mut templates = super::template::environment();
        // Event data (customer names) is HTML-escaped in the HTML body only.
        templates.set_auto_escape_callback(|name| match name {
            "html_body" => minijinja::AutoEscape::Html,
            _ => minijinja::AutoEscape::None,
        });
        let template =
            |env: &mut minijinja::Environment<'static>, name: &'static str, src: String| {
                env.add_template_owned(name, src)
                    .map_err(|e| invalid(key(name), format!("template error: {e}")))
            };
        template(&mut templates, "subject", required(&s.subject, "subject")?)?;
        template(&mut templates, "body", required(&s.body, "body")?)?;
        if let Some(html) = &s.html_body {
            template(&mut templates, "html_body", html.clone())?;
        }
        Ok(Email {
            transport,
            from,
            to,
            reply_to,
            templates,
            html: s.html_body.is_some(),
            name: s.name.clone(),
        })
    }

    fn render(&self, name: &str, event: &Event) -> Result<String, String> {
        self.templates
            .get_template(name)
            .and_then(|t| t.render(super::template::context(event, &Default::default())))
            .map_err(|e| format!("cannot render {name}: {e}"))
    }

    pub async fn send(&self, event: &Event) -> Outcome {
        let to = match &self.to {
            To::Fixed(m) => m.clone(),
            To::Customer => match event.customer_email().map(str::parse::<Mailbox>) {
                Some(Ok(m)) => m,
                Some(Err(_)) => {
                    return Outcome::Failed {
                        error: "the customer's email address is not valid".into(),
                    }
                }
                None => {
                    return Outcome::Failed {
                        error: "the notification has no customer email".into(),
                    }
                }
            },
        };
        let rendered = (|| {
            let subject = self.render("subject", event)?;
            let text = self.render("body", event)?;
            let html = if self.html {
                Some(self.render("html_body", event)?)
            } else {
                None
            };
            Ok::<_, String>((subject, text, html))
        })();
        let (subject, text, html) = match rendered {
            Ok(r) => r,
            Err(error) => return Outcome::Failed { error },
        };
        // Stable across retries, so a resend after a lost "250 OK" can be
        // recognised as the same message.
        let message_id = format!(
            "<{}.{}@{}>",
            event.id(),
            self.name,
            self.from.email.domain()
        );
        let mut builder = Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone())
            .to(to)
            .subject(subject.trim().replace(['\r', '\n'], " "));
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        let message = match html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(text, html)),
            None => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text),
            ),
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("cannot build the message: {e}"),
                }
            }
        };
        match self.transport.send(message).await {
            Ok(_) => Outcome::Done,
            Err(e) if e.is_permanent() => Outcome::Failed {
                error: format!("the SMTP server refused: {e}"),
            },
            Err(e) => Outcome::retry(format!("cannot send: {e}")),
        }
    }
}
