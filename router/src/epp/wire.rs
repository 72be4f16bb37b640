//! The ext_proc messages the picker reads and writes, as GAIE's Endpoint Picker protocol and
//! Envoy's `external_processor.proto` describe them: the destination as a header (`raw_value`,
//! overwriting) and as `envoy.lb` dynamic metadata with the same value, the route cache cleared,
//! errors as an `ImmediateResponse`.

use std::net::SocketAddr;

use modelfleet_proto::ext_proc::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeaderValue, HeaderValueOption,
    HeadersResponse, HttpStatus, ImmediateResponse, Metadata, ProcessingResponse, StreamedBodyResponse,
    Struct, TrailersResponse, Value, body_mutation::Mutation, header_value_option::HeaderAppendAction,
    processing_response::Response, value::Kind,
};

use super::{
    DESTINATION, LB_NAMESPACE, SERVED_KEY, SUBSET_KEY, SUBSET_NAMESPACE,
    decide::{Decision, Refusal, Subset},
};

/// The largest body chunk sent back in FULL_DUPLEX_STREAMED mode (GAIE's size; Envoy asks for at
/// most 64 KiB a message).
pub const CHUNK: usize = 62_000;

/// A header set to `value`, replacing any the request has.
fn set(key: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.to_vec(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// A header's value as text (Envoy sends `raw_value`; older proxies `value`).
pub fn text(header: &HeaderValue) -> String {
    if header.raw_value.is_empty() {
        header.value.clone()
    } else {
        String::from_utf8_lossy(&header.raw_value).into_owned()
    }
}

fn string(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

/// `{"envoy.lb": {"x-gateway-destination-endpoint": value}}`.
fn destination_metadata(value: &str) -> Struct {
    let inner = Struct {
        fields: [(DESTINATION.to_owned(), string(value.to_owned()))].into(),
    };
    Struct {
        fields: [(
            LB_NAMESPACE.to_owned(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into(),
    }
}

/// The answer carrying a decision: the destination header (and `content-length` when the body
/// was renamed), client-sent `x-gateway-destination-endpoint*` headers removed, the route
/// cache cleared. `replace_body`: the new body goes in this answer (BUFFERED mode).
fn routed_common(decision: &Decision, strip: &[String], replace_body: bool) -> CommonResponse {
    let mut set_headers = vec![set(DESTINATION, decision.destination().as_bytes())];
    if let Some(body) = &decision.body {
        set_headers.push(set("content-length", body.len().to_string().as_bytes()));
    }
    let body_mutation = decision
        .body
        .as_ref()
        .filter(|_| replace_body)
        .map(|b| BodyMutation {
            mutation: Some(Mutation::Body(b.to_vec())),
        });
    CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers,
            remove_headers: strip.to_vec(),
        }),
        body_mutation,
        clear_route_cache: true,
        ..CommonResponse::default()
    }
}

/// The decision as the answer to `request_headers` (FULL_DUPLEX_STREAMED, or a request without
/// a body).
pub fn routed_headers(decision: &Decision, strip: &[String]) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: Some(routed_common(decision, strip, false)),
        })),
        dynamic_metadata: Some(destination_metadata(&decision.destination())),
    }
}

/// The decision as the answer to the buffered `request_body` (BUFFERED mode: header mutations
/// in a body answer take effect only there).
pub fn routed_body(decision: &Decision, strip: &[String]) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestBody(BodyResponse {
            response: Some(routed_common(decision, strip, true)),
        })),
        dynamic_metadata: Some(destination_metadata(&decision.destination())),
    }
}

fn streamed(body: &[u8], end_of_stream: bool) -> Option<CommonResponse> {
    Some(CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(Mutation::StreamedResponse(StreamedBodyResponse {
                body: body.to_vec(),
                end_of_stream,
            })),
        }),
        ..CommonResponse::default()
    })
}

/// The request body handed back in FULL_DUPLEX_STREAMED mode, in chunks of at most [`CHUNK`]
/// bytes, the last one carrying `end_of_stream` (an empty body is one empty chunk).
pub fn request_body_echo(body: &[u8], end_of_stream: bool) -> Vec<ProcessingResponse> {
    let chunks: Vec<&[u8]> = if body.is_empty() {
        vec![&[]]
    } else {
        body.chunks(CHUNK).collect()
    };
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| ProcessingResponse {
            response: Some(Response::RequestBody(BodyResponse {
                response: streamed(chunk, end_of_stream && i == last),
            })),
            dynamic_metadata: None,
        })
        .collect()
}

/// A response body chunk handed back as it came (FULL_DUPLEX_STREAMED), or let through
/// unchanged (the other modes).
pub fn response_body(body: &[u8], end_of_stream: bool, duplex: bool) -> ProcessingResponse {
    let response = if duplex {
        streamed(body, end_of_stream)
    } else {
        Some(CommonResponse::default())
    };
    answer(Response::ResponseBody(BodyResponse { response }))
}

fn answer(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        dynamic_metadata: None,
    }
}

/// "Go on" to `request_headers` (BUFFERED mode: the decision comes with the body).
pub fn continue_request_headers() -> ProcessingResponse {
    answer(Response::RequestHeaders(HeadersResponse {
        response: Some(CommonResponse::default()),
    }))
}

/// "Go on" to a `request_body` that needs nothing more.
pub fn continue_request_body() -> ProcessingResponse {
    answer(Response::RequestBody(BodyResponse {
        response: Some(CommonResponse::default()),
    }))
}

/// "Go on" to `response_headers`.
pub fn continue_response_headers() -> ProcessingResponse {
    answer(Response::ResponseHeaders(HeadersResponse {
        response: Some(CommonResponse::default()),
    }))
}

/// "Go on" to `request_trailers`.
pub fn request_trailers() -> ProcessingResponse {
    answer(Response::RequestTrailers(TrailersResponse::default()))
}

/// "Go on" to `response_trailers`.
pub fn response_trailers() -> ProcessingResponse {
    answer(Response::ResponseTrailers(TrailersResponse::default()))
}

/// The proxy answers the client itself: the refusal's status, the OpenAI error envelope as JSON,
/// `Retry-After` where retrying helps. `details` goes to the proxy's access log.
pub fn immediate(refusal: &Refusal) -> ProcessingResponse {
    let mut headers = vec![set("content-type", b"application/json")];
    if let Some(after) = refusal.retry_after() {
        headers.push(set("retry-after", after.as_secs().max(1).to_string().as_bytes()));
    }
    answer(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(refusal.status()),
        }),
        headers: Some(HeaderMutation {
            set_headers: headers,
            remove_headers: Vec::new(),
        }),
        body: refusal.envelope(),
        grpc_status: None,
        details: format!("modelfleet_epp_{}", refusal.code()),
    }))
}

/// The subset hint in `metadata`, if the proxy sent one: a list of strings, or one
/// comma-separated string. Present in another form: a hint that allows nothing.
pub fn subset(metadata: Option<&Metadata>) -> Option<Subset> {
    let value = metadata?
        .filter_metadata
        .get(SUBSET_NAMESPACE)?
        .fields
        .get(SUBSET_KEY)?;
    Some(match &value.kind {
        Some(Kind::StringValue(s)) => Subset::parse([s.as_str()]),
        Some(Kind::ListValue(list)) => Subset::parse(list.values.iter().filter_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })),
        _ => Subset::default(),
    })
}

/// The endpoint the proxy reports as the one that served the request, if it does.
pub fn served(metadata: Option<&Metadata>) -> Option<SocketAddr> {
    let value = metadata?
        .filter_metadata
        .get(LB_NAMESPACE)?
        .fields
        .get(SERVED_KEY)?;
    match &value.kind {
        Some(Kind::StringValue(s)) => s.trim().parse().ok(),
        _ => None,
    }
}
