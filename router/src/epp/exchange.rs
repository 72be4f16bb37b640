//! One `Process` stream: one HTTP request as the proxy shows it, message by message. Which
//! message gets which answer depends on the filter's request body mode:
//!
//! - **FULL_DUPLEX_STREAMED** (GAIE's reference Envoy configuration; also assumed when the proxy
//!   sends no `protocol_config`): the proxy streams the body without waiting for the header
//!   answer, so the header answer is held until the body ends. It then carries the decision, and
//!   the whole body goes back after it in chunks (`streamed_response`), the last with
//!   `end_of_stream`. Response body chunks are handed back one for one.
//! - **BUFFERED**: the proxy waits for the header answer before it sends the body, so headers get
//!   an empty "go on" and the decision rides on the answer to the (whole) body.
//!
//! Other body modes are answered with a 500 naming the problem. A request without a body (its
//! headers end the stream) is decided on the headers. Every message gets exactly one answer, in
//! order, except in observability mode, where the proxy wants none. From the decision until the
//! response ends (or the stream does) the picked endpoint counts one request in flight on the
//! load board, moved to the endpoint the proxy reports as the one that served.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use modelfleet_contract::headers;
use modelfleet_proto::ext_proc::{
    HttpBody, HttpHeaders, Metadata, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
    processing_mode::BodySendMode, processing_request::Request,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{
    DESTINATION, EppMetrics,
    decide::{self, Ask, Refusal, Subset},
    wire,
};
use crate::{
    load::{EndpointLoad, InFlight},
    state::Router,
    table::Endpoint,
};

/// How the proxy sends the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    Duplex,
    Buffered,
    Unsupported(i32),
}

/// The body modes, from the first message's `protocol_config`.
#[derive(Debug, Clone, Copy)]
struct Modes {
    request: BodyMode,
    /// Response body chunks must be handed back (FULL_DUPLEX_STREAMED on the response path).
    response_duplex: bool,
}

impl Modes {
    fn of(config: Option<&ProtocolConfiguration>) -> Self {
        let Some(c) = config else {
            // A proxy too old to say: what GAIE's own picker assumes.
            return Self {
                request: BodyMode::Duplex,
                response_duplex: true,
            };
        };
        let request = match BodySendMode::try_from(c.request_body_mode) {
            Ok(BodySendMode::FullDuplexStreamed) => BodyMode::Duplex,
            Ok(BodySendMode::Buffered) => BodyMode::Buffered,
            _ => BodyMode::Unsupported(c.request_body_mode),
        };
        Self {
            request,
            response_duplex: c.response_body_mode == BodySendMode::FullDuplexStreamed as i32,
        }
    }
}

/// Where the decision's answer goes.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// The answer to `request_headers`; `echo`: the body goes back after it, ending the stream
    /// (`Some(true)`), or followed by trailers (`Some(false)`).
    Headers { echo: Option<bool> },
    /// The answer to the buffered `request_body`.
    Body,
}

/// The endpoint counted busy for this request.
#[derive(Debug)]
struct Picked {
    endpoints: Vec<Endpoint>,
    serving: Arc<EndpointLoad>,
    in_flight: Option<InFlight>,
    since: Instant,
}

/// One stream's state.
#[derive(Debug)]
pub(super) struct Exchange {
    router: Arc<Router>,
    metrics: EppMetrics,
    modes: Option<Modes>,
    subset: Option<Subset>,
    /// The request's `x-modelfleet-tier`.
    tier: Option<String>,
    /// Client-sent `x-gateway-destination-endpoint*` headers (the picker owns those names).
    strip: Vec<String>,
    body: Vec<u8>,
    decided: bool,
    finished: bool,
    picked: Option<Picked>,
}

impl Exchange {
    pub(super) fn new(router: Arc<Router>, metrics: EppMetrics) -> Self {
        Self {
            router,
            metrics,
            modes: None,
            subset: None,
            tier: None,
            strip: Vec::new(),
            body: Vec::new(),
            decided: false,
            finished: false,
            picked: None,
        }
    }

    /// An immediate response was sent: the proxy ends the request, nothing more is answered.
    pub(super) fn finished(&self) -> bool {
        self.finished
    }

    /// This router's requests in flight counted for this stream's pick (tests).
    #[cfg(test)]
    pub(super) fn serving(&self) -> Option<SocketAddr> {
        self.picked
            .as_ref()
            .filter(|p| p.in_flight.is_some())
            .map(|p| p.serving.addr)
    }

    /// The answers to one message from the proxy.
    pub(super) fn on_message(&mut self, message: ProcessingRequest, now: Instant) -> Vec<ProcessingResponse> {
        // The proxy ignores answers in observability mode and must not get any; nothing it
        // shows then is acted on either (it forwards the request wherever it likes).
        if message.observability_mode {
            return Vec::new();
        }
        let modes = *self
            .modes
            .get_or_insert_with(|| Modes::of(message.protocol_config.as_ref()));
        let metadata = message.metadata_context.as_ref();
        if self.subset.is_none() && !self.decided {
            self.subset = wire::subset(metadata);
        }
        match message.request {
            None => Vec::new(),
            Some(Request::RequestHeaders(h)) => self.request_headers(h, modes.request, now),
            Some(Request::RequestBody(b)) => self.request_body(b, modes.request, now),
            Some(Request::RequestTrailers(_)) => self.request_trailers(modes.request, now),
            Some(Request::ResponseHeaders(h)) => vec![self.response_headers(&h, metadata, now)],
            Some(Request::ResponseBody(b)) => vec![self.response_body(&b, metadata, modes.response_duplex)],
            Some(Request::ResponseTrailers(_)) => {
                self.end_in_flight();
                vec![wire::response_trailers()]
            }
        }
    }

    fn request_headers(&mut self, h: HttpHeaders, mode: BodyMode, now: Instant) -> Vec<ProcessingResponse> {
        for header in h.headers.iter().flat_map(|m| &m.headers) {
            let name = header.key.to_ascii_lowercase();
            if name == headers::TIER {
                self.tier = Some(wire::text(header).trim().to_owned());
            } else if name.starts_with(DESTINATION) && name != DESTINATION {
                self.strip.push(name);
            }
        }
        match mode {
            BodyMode::Unsupported(n) => self.refuse(Refusal::Unsupported(format!(
                "the ext_proc filter's request_body_mode is {}; the picker needs the body: use FULL_DUPLEX_STREAMED or BUFFERED",
                BodySendMode::try_from(n).map_or_else(|_| n.to_string(), |m| m.as_str_name().to_owned())
            ))),
            _ if h.end_of_stream => self.conclude(Slot::Headers { echo: None }, now),
            BodyMode::Buffered => vec![wire::continue_request_headers()],
            BodyMode::Duplex => Vec::new(),
        }
    }

    fn request_body(&mut self, b: HttpBody, mode: BodyMode, now: Instant) -> Vec<ProcessingResponse> {
        if self.decided {
            return match mode {
                BodyMode::Buffered => vec![wire::continue_request_body()],
                _ => Vec::new(),
            };
        }
        self.body.extend_from_slice(&b.body);
        let max = self.router.config.max_body_bytes;
        if self.body.len() > max {
            return self.refuse(Refusal::TooLarge(max));
        }
        match mode {
            BodyMode::Buffered => self.conclude(Slot::Body, now),
            BodyMode::Duplex if b.end_of_stream => self.conclude(Slot::Headers { echo: Some(true) }, now),
            _ => Vec::new(),
        }
    }

    fn request_trailers(&mut self, mode: BodyMode, now: Instant) -> Vec<ProcessingResponse> {
        let mut answers = match mode {
            // Trailers end a streamed body that had no end_of_stream.
            BodyMode::Duplex if !self.decided => self.conclude(Slot::Headers { echo: Some(false) }, now),
            _ => Vec::new(),
        };
        if !self.finished {
            answers.push(wire::request_trailers());
        }
        answers
    }

    /// Decides on the body so far and answers in `slot`.
    fn conclude(&mut self, slot: Slot, now: Instant) -> Vec<ProcessingResponse> {
        self.decided = true;
        let ask = Ask {
            body: &self.body,
            tier: self.tier.as_deref(),
            subset: self.subset.as_ref(),
        };
        let decision = match decide::decide(&self.router, &ask, now) {
            Ok(d) => d,
            Err(refusal) => return self.refuse(refusal),
        };
        self.metrics.count("picked");
        tracing::debug!(model = %decision.model, revision = %decision.revision, destination = %decision.destination(), fallback = ?decision.fallback, "epp pick");
        let answers = match slot {
            Slot::Body => vec![wire::routed_body(&decision, &self.strip)],
            Slot::Headers { echo } => {
                let mut out = vec![wire::routed_headers(&decision, &self.strip)];
                if let Some(end_of_stream) = echo {
                    let body = decision.body.as_deref().unwrap_or(&self.body);
                    out.extend(wire::request_body_echo(body, end_of_stream));
                }
                out
            }
        };
        let serving = decision.picked.load.clone();
        self.picked = Some(Picked {
            in_flight: Some(serving.begin()),
            serving,
            endpoints: decision.endpoints().cloned().collect(),
            since: now,
        });
        answers
    }

    fn refuse(&mut self, refusal: Refusal) -> Vec<ProcessingResponse> {
        self.decided = true;
        self.finished = true;
        self.metrics.count(refusal.code());
        tracing::debug!(status = refusal.status(), error = %refusal, "epp refusal");
        vec![wire::immediate(&refusal)]
    }

    fn response_headers(
        &mut self,
        h: &HttpHeaders,
        metadata: Option<&Metadata>,
        now: Instant,
    ) -> ProcessingResponse {
        self.attribute(wire::served(metadata));
        if let Some(picked) = &self.picked {
            picked
                .serving
                .observe_latency(now.saturating_duration_since(picked.since));
            let load = h
                .headers
                .iter()
                .flat_map(|m| &m.headers)
                .find(|x| x.key.eq_ignore_ascii_case(headers::LOAD))
                .and_then(|x| wire::text(x).trim().parse::<u32>().ok());
            if let Some(n) = load {
                picked.serving.report(n, now);
            }
        }
        if h.end_of_stream {
            self.end_in_flight();
        }
        wire::continue_response_headers()
    }

    fn response_body(
        &mut self,
        b: &HttpBody,
        metadata: Option<&Metadata>,
        duplex: bool,
    ) -> ProcessingResponse {
        self.attribute(wire::served(metadata));
        if b.end_of_stream {
            self.end_in_flight();
        }
        wire::response_body(&b.body, b.end_of_stream, duplex)
    }

    /// Moves the in-flight count to the endpoint that served, when it was a fallback.
    fn attribute(&mut self, served: Option<SocketAddr>) {
        let (Some(picked), Some(addr)) = (self.picked.as_mut(), served) else {
            return;
        };
        if picked.serving.addr == addr {
            return;
        }
        if let Some(e) = picked.endpoints.iter().find(|e| e.load.addr == addr) {
            picked.serving = e.load.clone();
            if picked.in_flight.is_some() {
                picked.in_flight = Some(picked.serving.begin());
            }
        }
    }

    fn end_in_flight(&mut self) {
        if let Some(p) = self.picked.as_mut() {
            p.in_flight = None;
        }
    }
}

/// Answers `inbound` until the proxy ends the stream (or an immediate response ends the
/// request). Dropping the exchange ends the request's in-flight count.
pub(super) async fn run(
    mut inbound: Streaming<ProcessingRequest>,
    out: mpsc::Sender<Result<ProcessingResponse, Status>>,
    mut exchange: Exchange,
) {
    loop {
        let message = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%status, "ext_proc stream ended by the proxy");
                return;
            }
        };
        for answer in exchange.on_message(message, Instant::now()) {
            if out.send(Ok(answer)).await.is_err() {
                return;
            }
        }
        if exchange.finished() {
            return;
        }
    }
}
