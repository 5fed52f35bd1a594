from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubjectType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBJECT_TYPE_UNSPECIFIED: _ClassVar[SubjectType]
    SUBJECT_TYPE_PERSON: _ClassVar[SubjectType]
    SUBJECT_TYPE_ORG: _ClassVar[SubjectType]

class IdType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ID_TYPE_UNSPECIFIED: _ClassVar[IdType]
    ID_TYPE_RESIDENT_ID: _ClassVar[IdType]
    ID_TYPE_USCC: _ClassVar[IdType]

class ProductType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRODUCT_TYPE_UNSPECIFIED: _ClassVar[ProductType]
    PRODUCT_TYPE_CONSUMER: _ClassVar[ProductType]
    PRODUCT_TYPE_BUSINESS: _ClassVar[ProductType]
    PRODUCT_TYPE_AUTO: _ClassVar[ProductType]
    PRODUCT_TYPE_EDUCATION: _ClassVar[ProductType]
    PRODUCT_TYPE_MORTGAGE: _ClassVar[ProductType]
    PRODUCT_TYPE_OTHER: _ClassVar[ProductType]

class RepaymentMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPAYMENT_METHOD_UNSPECIFIED: _ClassVar[RepaymentMethod]
    REPAYMENT_METHOD_EQUAL_INSTALLMENT: _ClassVar[RepaymentMethod]
    REPAYMENT_METHOD_EQUAL_PRINCIPAL: _ClassVar[RepaymentMethod]
    REPAYMENT_METHOD_INTEREST_FIRST: _ClassVar[RepaymentMethod]
    REPAYMENT_METHOD_BULLET: _ClassVar[RepaymentMethod]
    REPAYMENT_METHOD_REVOLVING: _ClassVar[RepaymentMethod]

class LoanStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAN_STATUS_UNSPECIFIED: _ClassVar[LoanStatus]
    LOAN_STATUS_ACTIVE: _ClassVar[LoanStatus]
    LOAN_STATUS_SETTLED: _ClassVar[LoanStatus]
    LOAN_STATUS_WRITTEN_OFF: _ClassVar[LoanStatus]

class GuaranteeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARANTEE_TYPE_UNSPECIFIED: _ClassVar[GuaranteeType]
    GUARANTEE_TYPE_NONE: _ClassVar[GuaranteeType]
    GUARANTEE_TYPE_GUARANTOR: _ClassVar[GuaranteeType]
    GUARANTEE_TYPE_COLLATERAL: _ClassVar[GuaranteeType]
    GUARANTEE_TYPE_INSURANCE: _ClassVar[GuaranteeType]
    GUARANTEE_TYPE_MARGIN: _ClassVar[GuaranteeType]

class FlagType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLAG_TYPE_UNSPECIFIED: _ClassVar[FlagType]
    FLAG_TYPE_FRAUD: _ClassVar[FlagType]
    FLAG_TYPE_MALICIOUS_DEFAULT: _ClassVar[FlagType]

class FlagStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLAG_STATUS_UNSPECIFIED: _ClassVar[FlagStatus]
    FLAG_STATUS_ACTIVE: _ClassVar[FlagStatus]
    FLAG_STATUS_CLEARED: _ClassVar[FlagStatus]

class Purpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PURPOSE_UNSPECIFIED: _ClassVar[Purpose]
    PURPOSE_LOAN_APPROVAL: _ClassVar[Purpose]
    PURPOSE_CREDIT_LIMIT_REVIEW: _ClassVar[Purpose]
    PURPOSE_POST_LOAN_MONITORING: _ClassVar[Purpose]

class QueryMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_MODE_UNSPECIFIED: _ClassVar[QueryMode]
    QUERY_MODE_REPORT: _ClassVar[QueryMode]
    QUERY_MODE_PRECHECK: _ClassVar[QueryMode]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_MEMBER: _ClassVar[Role]
    ROLE_AUDITOR: _ClassVar[Role]
    ROLE_GATEWAY: _ClassVar[Role]
SUBJECT_TYPE_UNSPECIFIED: SubjectType
SUBJECT_TYPE_PERSON: SubjectType
SUBJECT_TYPE_ORG: SubjectType
ID_TYPE_UNSPECIFIED: IdType
ID_TYPE_RESIDENT_ID: IdType
ID_TYPE_USCC: IdType
PRODUCT_TYPE_UNSPECIFIED: ProductType
PRODUCT_TYPE_CONSUMER: ProductType
PRODUCT_TYPE_BUSINESS: ProductType
PRODUCT_TYPE_AUTO: ProductType
PRODUCT_TYPE_EDUCATION: ProductType
PRODUCT_TYPE_MORTGAGE: ProductType
PRODUCT_TYPE_OTHER: ProductType
REPAYMENT_METHOD_UNSPECIFIED: RepaymentMethod
REPAYMENT_METHOD_EQUAL_INSTALLMENT: RepaymentMethod
REPAYMENT_METHOD_EQUAL_PRINCIPAL: RepaymentMethod
REPAYMENT_METHOD_INTEREST_FIRST: RepaymentMethod
REPAYMENT_METHOD_BULLET: RepaymentMethod
REPAYMENT_METHOD_REVOLVING: RepaymentMethod
LOAN_STATUS_UNSPECIFIED: LoanStatus
LOAN_STATUS_ACTIVE: LoanStatus
LOAN_STATUS_SETTLED: LoanStatus
LOAN_STATUS_WRITTEN_OFF: LoanStatus
GUARANTEE_TYPE_UNSPECIFIED: GuaranteeType
GUARANTEE_TYPE_NONE: GuaranteeType
GUARANTEE_TYPE_GUARANTOR: GuaranteeType
GUARANTEE_TYPE_COLLATERAL: GuaranteeType
GUARANTEE_TYPE_INSURANCE: GuaranteeType
GUARANTEE_TYPE_MARGIN: GuaranteeType
FLAG_TYPE_UNSPECIFIED: FlagType
FLAG_TYPE_FRAUD: FlagType
FLAG_TYPE_MALICIOUS_DEFAULT: FlagType
FLAG_STATUS_UNSPECIFIED: FlagStatus
FLAG_STATUS_ACTIVE: FlagStatus
FLAG_STATUS_CLEARED: FlagStatus
PURPOSE_UNSPECIFIED: Purpose
PURPOSE_LOAN_APPROVAL: Purpose
PURPOSE_CREDIT_LIMIT_REVIEW: Purpose
PURPOSE_POST_LOAN_MONITORING: Purpose
QUERY_MODE_UNSPECIFIED: QueryMode
QUERY_MODE_REPORT: QueryMode
QUERY_MODE_PRECHECK: QueryMode
ROLE_UNSPECIFIED: Role
ROLE_MEMBER: Role
ROLE_AUDITOR: Role
ROLE_GATEWAY: Role

class QueryRequestBody(_message.Message):
    __slots__ = ("query_id", "querier_id", "credential_serial", "subject_token_sha256", "matching_key_epoch", "purpose", "consent_id", "consent_sha256", "as_of", "mode", "paillier_key_fingerprint", "timestamp_ms", "precheck_ciphertext")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    QUERIER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_SERIAL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TOKEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    MATCHING_KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PAILLIER_KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    PRECHECK_CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    querier_id: str
    credential_serial: int
    subject_token_sha256: bytes
    matching_key_epoch: int
    purpose: Purpose
    consent_id: str
    consent_sha256: bytes
    as_of: str
    mode: QueryMode
    paillier_key_fingerprint: bytes
    timestamp_ms: int
    precheck_ciphertext: bytes
    def __init__(self, query_id: _Optional[str] = ..., querier_id: _Optional[str] = ..., credential_serial: _Optional[int] = ..., subject_token_sha256: _Optional[bytes] = ..., matching_key_epoch: _Optional[int] = ..., purpose: _Optional[_Union[Purpose, str]] = ..., consent_id: _Optional[str] = ..., consent_sha256: _Optional[bytes] = ..., as_of: _Optional[str] = ..., mode: _Optional[_Union[QueryMode, str]] = ..., paillier_key_fingerprint: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., precheck_ciphertext: _Optional[bytes] = ...) -> None: ...

class SignedQuery(_message.Message):
    __slots__ = ("body", "signature", "subject_token", "known_tree_size")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KNOWN_TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    subject_token: bytes
    known_tree_size: int
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., subject_token: _Optional[bytes] = ..., known_tree_size: _Optional[int] = ...) -> None: ...

class MemberQueryRequest(_message.Message):
    __slots__ = ("query", "querier_credential")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    QUERIER_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    query: SignedQuery
    querier_credential: bytes
    def __init__(self, query: _Optional[_Union[SignedQuery, _Mapping]] = ..., querier_credential: _Optional[bytes] = ...) -> None: ...

class MemberQueryResponse(_message.Message):
    __slots__ = ("member_id", "ciphertext", "signature", "book_status")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    BOOK_STATUS_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    ciphertext: bytes
    signature: bytes
    book_status: bytes
    def __init__(self, member_id: _Optional[str] = ..., ciphertext: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., book_status: _Optional[bytes] = ...) -> None: ...

class MemberQueryBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[MemberQueryRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[MemberQueryRequest, _Mapping]]] = ...) -> None: ...

class MemberBatchError(_message.Message):
    __slots__ = ("reason", "message", "code")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    code: int
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class MemberBatchItem(_message.Message):
    __slots__ = ("answer", "error")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    answer: MemberQueryResponse
    error: MemberBatchError
    def __init__(self, answer: _Optional[_Union[MemberQueryResponse, _Mapping]] = ..., error: _Optional[_Union[MemberBatchError, _Mapping]] = ...) -> None: ...

class MemberQueryBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[MemberBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[MemberBatchItem, _Mapping]]] = ...) -> None: ...

class AnswerReceipt(_message.Message):
    __slots__ = ("member_id", "ciphertext_sha256", "signature", "book_status")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    BOOK_STATUS_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    ciphertext_sha256: bytes
    signature: bytes
    book_status: bytes
    def __init__(self, member_id: _Optional[str] = ..., ciphertext_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., book_status: _Optional[bytes] = ...) -> None: ...

class AuditReceipt(_message.Message):
    __slots__ = ("present", "leaf_index", "tree_size", "checkpoint", "inclusion_proof", "entry", "consistency_from", "consistency_proof")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FROM_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_PROOF_FIELD_NUMBER: _ClassVar[int]
    present: bool
    leaf_index: int
    tree_size: int
    checkpoint: str
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    entry: bytes
    consistency_from: int
    consistency_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, present: _Optional[bool] = ..., leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., checkpoint: _Optional[str] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ..., entry: _Optional[bytes] = ..., consistency_from: _Optional[int] = ..., consistency_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class QueryError(_message.Message):
    __slots__ = ("exit_code", "reason", "message")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    reason: str
    message: str
    def __init__(self, exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GatewayQueryResponse(_message.Message):
    __slots__ = ("query_id", "members_asked", "members_answered", "complete", "aggregate_ciphertext", "inquiries_30d", "asked_member_ids", "answers", "audit", "error")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_ASKED_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    INQUIRIES_30D_FIELD_NUMBER: _ClassVar[int]
    ASKED_MEMBER_IDS_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    members_asked: int
    members_answered: int
    complete: bool
    aggregate_ciphertext: bytes
    inquiries_30d: int
    asked_member_ids: _containers.RepeatedScalarFieldContainer[str]
    answers: _containers.RepeatedCompositeFieldContainer[AnswerReceipt]
    audit: AuditReceipt
    error: QueryError
    def __init__(self, query_id: _Optional[str] = ..., members_asked: _Optional[int] = ..., members_answered: _Optional[int] = ..., complete: _Optional[bool] = ..., aggregate_ciphertext: _Optional[bytes] = ..., inquiries_30d: _Optional[int] = ..., asked_member_ids: _Optional[_Iterable[str]] = ..., answers: _Optional[_Iterable[_Union[AnswerReceipt, _Mapping]]] = ..., audit: _Optional[_Union[AuditReceipt, _Mapping]] = ..., error: _Optional[_Union[QueryError, _Mapping]] = ...) -> None: ...

class CredentialBody(_message.Message):
    __slots__ = ("member_id", "name", "role", "tls_cert_sha256", "ed25519_public_key", "paillier_n", "x25519_public_key", "serial", "not_before", "not_after", "member_fingerprint", "endpoint", "tls_public_key_der")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ED25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PAILLIER_N_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TLS_PUBLIC_KEY_DER_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    name: str
    role: Role
    tls_cert_sha256: bytes
    ed25519_public_key: bytes
    paillier_n: bytes
    x25519_public_key: bytes
    serial: int
    not_before: int
    not_after: int
    member_fingerprint: bytes
    endpoint: str
    tls_public_key_der: bytes
    def __init__(self, member_id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., tls_cert_sha256: _Optional[bytes] = ..., ed25519_public_key: _Optional[bytes] = ..., paillier_n: _Optional[bytes] = ..., x25519_public_key: _Optional[bytes] = ..., serial: _Optional[int] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., member_fingerprint: _Optional[bytes] = ..., endpoint: _Optional[str] = ..., tls_public_key_der: _Optional[bytes] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("body", "ca_signature", "predecessor_signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    CA_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PREDECESSOR_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    ca_signature: bytes
    predecessor_signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., ca_signature: _Optional[bytes] = ..., predecessor_signature: _Optional[bytes] = ...) -> None: ...

class JoinRequestBody(_message.Message):
    __slots__ = ("member_id", "name", "role", "tls_csr_der", "ed25519_public_key", "paillier_n", "x25519_public_key", "endpoint", "created_at")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TLS_CSR_DER_FIELD_NUMBER: _ClassVar[int]
    ED25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PAILLIER_N_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    name: str
    role: Role
    tls_csr_der: bytes
    ed25519_public_key: bytes
    paillier_n: bytes
    x25519_public_key: bytes
    endpoint: str
    created_at: int
    def __init__(self, member_id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., tls_csr_der: _Optional[bytes] = ..., ed25519_public_key: _Optional[bytes] = ..., paillier_n: _Optional[bytes] = ..., x25519_public_key: _Optional[bytes] = ..., endpoint: _Optional[str] = ..., created_at: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("body", "signature", "predecessor_signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PREDECESSOR_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    predecessor_signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., predecessor_signature: _Optional[bytes] = ...) -> None: ...

class MatchingKeyShareBody(_message.Message):
    __slots__ = ("sender_id", "recipient_id", "recipient_x25519_public_key", "epoch", "ephemeral_public_key", "nonce", "ciphertext", "check_value", "created_at")
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_X25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    CHECK_VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    sender_id: str
    recipient_id: str
    recipient_x25519_public_key: bytes
    epoch: int
    ephemeral_public_key: bytes
    nonce: bytes
    ciphertext: bytes
    check_value: bytes
    created_at: int
    def __init__(self, sender_id: _Optional[str] = ..., recipient_id: _Optional[str] = ..., recipient_x25519_public_key: _Optional[bytes] = ..., epoch: _Optional[int] = ..., ephemeral_public_key: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ..., check_value: _Optional[bytes] = ..., created_at: _Optional[int] = ...) -> None: ...

class MatchingKeyShare(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PostKeyShareResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMemberCredentialRequest(_message.Message):
    __slots__ = ("member_id",)
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    def __init__(self, member_id: _Optional[str] = ...) -> None: ...

class FetchKeySharesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchKeySharesResponse(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[MatchingKeyShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[MatchingKeyShare, _Mapping]]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    def __init__(self, checkpoint: _Optional[str] = ...) -> None: ...

class GetEntriesRequest(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("index", "tree_size")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("first", "second")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    first: int
    second: int
    def __init__(self, first: _Optional[int] = ..., second: _Optional[int] = ...) -> None: ...

class Proof(_message.Message):
    __slots__ = ("hashes",)
    HASHES_FIELD_NUMBER: _ClassVar[int]
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SponsorshipBody(_message.Message):
    __slots__ = ("newcomer_id", "newcomer_fingerprint", "sponsor_id", "time_ms")
    NEWCOMER_ID_FIELD_NUMBER: _ClassVar[int]
    NEWCOMER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SPONSOR_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    newcomer_id: str
    newcomer_fingerprint: bytes
    sponsor_id: str
    time_ms: int
    def __init__(self, newcomer_id: _Optional[str] = ..., newcomer_fingerprint: _Optional[bytes] = ..., sponsor_id: _Optional[str] = ..., time_ms: _Optional[int] = ...) -> None: ...

class SignedSponsorship(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class MatchingKeyCreatedBody(_message.Message):
    __slots__ = ("founder_id", "founder_fingerprint", "epoch", "check_value", "time_ms")
    FOUNDER_ID_FIELD_NUMBER: _ClassVar[int]
    FOUNDER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CHECK_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    founder_id: str
    founder_fingerprint: bytes
    epoch: int
    check_value: bytes
    time_ms: int
    def __init__(self, founder_id: _Optional[str] = ..., founder_fingerprint: _Optional[bytes] = ..., epoch: _Optional[int] = ..., check_value: _Optional[bytes] = ..., time_ms: _Optional[int] = ...) -> None: ...

class SignedMatchingKeyCreated(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ProvenEntry(_message.Message):
    __slots__ = ("index", "data", "inclusion_proof", "membership_seq")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_SEQ_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    membership_seq: int
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ..., membership_seq: _Optional[int] = ...) -> None: ...

class LoggedStatementResponse(_message.Message):
    __slots__ = ("entry", "checkpoint")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    entry: ProvenEntry
    checkpoint: str
    def __init__(self, entry: _Optional[_Union[ProvenEntry, _Mapping]] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class GetMembershipRequest(_message.Message):
    __slots__ = ("from_membership_seq", "max_entries")
    FROM_MEMBERSHIP_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    from_membership_seq: int
    max_entries: int
    def __init__(self, from_membership_seq: _Optional[int] = ..., max_entries: _Optional[int] = ...) -> None: ...

class ProvenEntries(_message.Message):
    __slots__ = ("checkpoint", "entries")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    entries: _containers.RepeatedCompositeFieldContainer[ProvenEntry]
    def __init__(self, checkpoint: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[ProvenEntry, _Mapping]]] = ...) -> None: ...

class GetWitnessCheckpointRequest(_message.Message):
    __slots__ = ("old_size",)
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    def __init__(self, old_size: _Optional[int] = ...) -> None: ...

class WitnessCheckpoint(_message.Message):
    __slots__ = ("checkpoint", "consistency_proof")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_PROOF_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    consistency_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, checkpoint: _Optional[str] = ..., consistency_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PostCosignatureRequest(_message.Message):
    __slots__ = ("checkpoint", "cosignature_line")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    COSIGNATURE_LINE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    cosignature_line: str
    def __init__(self, checkpoint: _Optional[str] = ..., cosignature_line: _Optional[str] = ...) -> None: ...

class PostCosignatureResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetWitnessedCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetWitnessedCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "newest_per_witness")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_PER_WITNESS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    newest_per_witness: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, checkpoint: _Optional[str] = ..., newest_per_witness: _Optional[_Iterable[str]] = ...) -> None: ...

class GetQueryProofsRequest(_message.Message):
    __slots__ = ("from_index", "max_entries")
    FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    from_index: int
    max_entries: int
    def __init__(self, from_index: _Optional[int] = ..., max_entries: _Optional[int] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyResponse(_message.Message):
    __slots__ = ("policy_json",)
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    policy_json: str
    def __init__(self, policy_json: _Optional[str] = ...) -> None: ...

class SignedDisclosure(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SignedBookStatus(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
