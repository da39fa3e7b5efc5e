/*
 * p11wld.h: the administrative extension of libp11wld.so.
 *
 * Reach it in one of two ways:
 *   - P11WLD_GetFunctionList(&list), exported by libp11wld.so;
 *   - C_GetInterface("p11wld", NULL, &iface, 0), whose pFunctionList points
 *     to the same P11WLD_FUNCTION_LIST.
 *
 * The types mirror PKCS#11 on LP64 and ILP32 Unix: a p11wld_ulong is a
 * CK_ULONG, a p11wld_rv is a CK_RV and every function returns a CKR_ code.
 * GetInfo and the report functions work at any time; every other function
 * needs the module to be initialized with C_Initialize first and returns
 * CKR_CRYPTOKI_NOT_INITIALIZED otherwise.
 * Lists follow the PKCS#11 two-call convention: pass a NULL buffer to read
 * the count, then a buffer of that many entries. A buffer that is too small
 * gives CKR_BUFFER_TOO_SMALL with the count needed.
 *
 * Text fields are NUL-terminated, unlike PKCS#11's blank-padded ones.
 * Token and object labels in P11WLD_PHYSICAL_SLOT, P11WLD_TOKEN_REPORT and
 * P11WLD_OBJECT_REF carry the bytes the token stores: PKCS#11 defines them
 * as UTF-8, but a token can hold any bytes, and callers that print them
 * should escape control characters and invalid UTF-8. A label byte 0 ends
 * the field early. Every other text field is UTF-8, cut at a character
 * boundary when longer than the field.
 *
 * Replication and verification take the tokens by slot reference: a
 * positional number from ListPhysicalSlots together with the token serial
 * the caller expects there, or a serial alone. Positions shift when a device
 * drops out between listing and use, so a position whose token no longer
 * has the expected serial rejects the whole run before anything is written.
 * Uninitialized tokens often all have an empty serial, so a position that
 * expects one must name its module as well, and may name its vendor slot id.
 *
 * Version 2.0 added P11WLD_SLOT_REF.vendor_slot_id, which changes the layout
 * of P11WLD_SLOT_REF, P11WLD_REPLICATE_ARGS and P11WLD_VERIFY_ARGS, so a
 * caller built for 1.x must not use a 2.x module. Version 2.1 added
 * GetReportProblemMessage at the end of P11WLD_FUNCTION_LIST; a caller
 * reads that entry only from a module of version 2.1 or later.
 */
#ifndef P11WLD_H
#define P11WLD_H

#ifdef __cplusplus
extern "C" {
#endif

typedef unsigned long p11wld_ulong;
typedef unsigned long p11wld_rv;

#define P11WLD_INTERFACE_NAME "p11wld"
#define P11WLD_VERSION_MAJOR 2
#define P11WLD_VERSION_MINOR 1

/* A p11wld_ulong index or id that names nothing. */
#define P11WLD_NONE (~0UL)

/* Member states, as seen by the calling process. */
#define P11WLD_MEMBER_UP 0UL
#define P11WLD_MEMBER_DOWN 1UL

/* P11WLD_PHYSICAL_SLOT.flags */
#define P11WLD_SLOT_TOKEN_PRESENT 0x1UL
#define P11WLD_SLOT_TOKEN_INITIALIZED 0x2UL
#define P11WLD_SLOT_IN_WLD 0x4UL
#define P11WLD_SLOT_USER_PIN_INITIALIZED 0x8UL

/* P11WLD_PHYSICAL_SLOT.wld_slot_id when the slot belongs to no WLD slot. */
#define P11WLD_NO_WLD_SLOT (~0UL)

/* Sizes of the text fields, including the terminating NUL. */
#define P11WLD_MODULE_NAME_SIZE 64
#define P11WLD_LABEL_SIZE 33
#define P11WLD_SERIAL_SIZE 17
#define P11WLD_OBJECT_LABEL_SIZE 65
#define P11WLD_OBJECT_ID_SIZE 32
#define P11WLD_MESSAGE_SIZE 256

typedef struct P11WLD_VERSION {
    unsigned char major;
    unsigned char minor;
} P11WLD_VERSION;

/* One physical slot of one vendor module. */
typedef struct P11WLD_PHYSICAL_SLOT {
    /* Position: module order from the configuration, then each module's own
     * slot order, counting from 0. It shifts when a device drops out. */
    p11wld_ulong position;
    char module_name[P11WLD_MODULE_NAME_SIZE];
    /* The vendor module's own slot id. */
    p11wld_ulong vendor_slot_id;
    /* Token label (its bytes as stored) and serial with the padding blanks
     * removed; empty when no token is present. An uninitialized token has
     * an empty label and may have an empty serial. */
    char label[P11WLD_LABEL_SIZE];
    char serial[P11WLD_SERIAL_SIZE];
    /* P11WLD_SLOT_* bits. */
    p11wld_ulong flags;
    /* The WLD slot the token belongs to, or P11WLD_NO_WLD_SLOT. */
    p11wld_ulong wld_slot_id;
} P11WLD_PHYSICAL_SLOT;

/* One member token of one WLD slot. */
typedef struct P11WLD_MEMBER_STATUS {
    p11wld_ulong wld_slot_id;
    char module_name[P11WLD_MODULE_NAME_SIZE];
    p11wld_ulong vendor_slot_id;
    char label[P11WLD_LABEL_SIZE];
    char serial[P11WLD_SERIAL_SIZE];
    /* P11WLD_MEMBER_UP or P11WLD_MEMBER_DOWN. */
    p11wld_ulong state;
    /* Sessions this process has open on the member. */
    p11wld_ulong open_sessions;
    /* Sessions ever opened on the member by this process. */
    p11wld_ulong total_sessions;
    /* Calls to the member that failed with a device-level error. */
    p11wld_ulong failures;
    /* The CKR_ code of the last device-level failure, 0 if none. */
    p11wld_rv last_error;
} P11WLD_MEMBER_STATUS;

/* P11WLD_MODULE_STATUS.state */
/* Initialized, and C_GetSlotList lists at least one slot. */
#define P11WLD_MODULE_UP 0UL
/* C_Initialize failed, so the calling process never learns its tokens. */
#define P11WLD_MODULE_NOT_INITIALIZED 1UL
/* C_GetSlotList failed (error is its code) or listed no slot. */
#define P11WLD_MODULE_NO_SLOTS 2UL

/* One configured module, as the calling process reaches it now. A module
 * that is not P11WLD_MODULE_UP is unreachable: replicating to all members
 * of a WLD slot and verifying a WLD slot are then rejected. */
typedef struct P11WLD_MODULE_STATUS {
    char module_name[P11WLD_MODULE_NAME_SIZE];
    /* P11WLD_MODULE_* */
    p11wld_ulong state;
    /* Slots C_GetSlotList listed; 0 unless state is P11WLD_MODULE_UP. */
    p11wld_ulong slot_count;
    /* Members of WLD slots on the module, and how many of them are down. */
    p11wld_ulong member_count;
    p11wld_ulong members_down;
    /* With P11WLD_MODULE_NO_SLOTS, the code C_GetSlotList returned, or
     * CKR_OK when it listed no slot; else CKR_OK. */
    p11wld_rv error;
} P11WLD_MODULE_STATUS;

/* P11WLD_SLOT_REF.kind */
/* By position and expected serial. An empty expected serial means that the
 * caller expects an uninitialized token with an empty serial there, and
 * then module_name is required. */
#define P11WLD_REF_POSITION 1UL
/* By token serial alone, for example from pkcs11:serial=... */
#define P11WLD_REF_SERIAL 2UL

/* A physical slot named by the caller. */
typedef struct P11WLD_SLOT_REF {
    /* P11WLD_REF_POSITION or P11WLD_REF_SERIAL. */
    p11wld_ulong kind;
    /* The positional number; ignored with P11WLD_REF_SERIAL. */
    p11wld_ulong position;
    /* The serial the caller expects (with P11WLD_REF_POSITION) or looks
     * for (with P11WLD_REF_SERIAL), without padding blanks. */
    char serial[P11WLD_SERIAL_SIZE];
    /* With P11WLD_REF_POSITION: the module the caller expects the
     * position in, or an empty string to check none. It is required when
     * serial is empty, because uninitialized tokens often all have an empty
     * serial, and only the module and the vendor slot id catch a shift
     * between two of them. A position reference with an empty serial and
     * an empty module_name gives CKR_ARGUMENTS_BAD. Ignored with
     * P11WLD_REF_SERIAL. */
    char module_name[P11WLD_MODULE_NAME_SIZE];
    /* With P11WLD_REF_POSITION: the vendor slot id the caller expects at
     * the position (P11WLD_PHYSICAL_SLOT.vendor_slot_id), or P11WLD_NONE to
     * check none. Set it to P11WLD_NONE explicitly: 0 is a slot id. Ignored
     * with P11WLD_REF_SERIAL. */
    p11wld_ulong vendor_slot_id;
} P11WLD_SLOT_REF;

/* P11WLD_PROGRESS.phase */
/* Checking every token and reading the objects; nothing is written. */
#define P11WLD_PHASE_CHECK 1UL
/* Initializing an uninitialized destination and setting its user PIN. */
#define P11WLD_PHASE_INITIALIZE 2UL
/* Creating and replacing objects on a destination. */
#define P11WLD_PHASE_COPY 3UL
/* Removing objects the master lacks from a destination. */
#define P11WLD_PHASE_REMOVE 4UL
/* Comparing the objects of two tokens. */
#define P11WLD_PHASE_COMPARE 5UL

/* The state of a running replication or verification. */
typedef struct P11WLD_PROGRESS {
    /* P11WLD_PHASE_* */
    p11wld_ulong phase;
    /* The token being worked on, as an index in the report's token list,
     * or P11WLD_NONE. */
    p11wld_ulong token_index;
    /* Steps done and steps in all, over the whole run. A step is one object
     * created, replaced, removed or compared. total is 0 until the check
     * phase has planned the run, and done never exceeds total. */
    p11wld_ulong done;
    p11wld_ulong total;
} P11WLD_PROGRESS;

/* Called from the thread that called Replicate or Verify, when the run starts,
 * when a destination is being initialized, and after each step.
 * It must not call back into the module. */
typedef void (*P11WLD_PROGRESS_CALLBACK)(void *context,
                                         const P11WLD_PROGRESS *progress);

/* P11WLD_REPLICATE_ARGS.flags */
/* Plan the run and report it without writing anything. */
#define P11WLD_REPLICATE_DRY_RUN 0x1UL
/* Leave out keys that cannot travel (CKA_EXTRACTABLE false, a mechanism a
 * token lacks) and report them as skipped. Without this flag such a key
 * rejects the whole run before anything is written. */
#define P11WLD_REPLICATE_SKIP_UNEXTRACTABLE 0x2UL
/* Replicate to every other member of the master's WLD slot; destinations
 * must then be NULL with destination_count 0. The run is rejected before
 * anything is written unless every configured module is reachable
 * (P11WLD_MODULE_UP) and every member of the slot is up and found, because
 * a member left out would silently keep its old objects. */
#define P11WLD_REPLICATE_ALL 0x4UL

typedef struct P11WLD_REPLICATE_ARGS {
    /* The token to copy from. It is never modified: it is used through a
     * read-only session, and only session objects are made on it. */
    P11WLD_SLOT_REF master;
    /* The tokens to copy to. */
    const P11WLD_SLOT_REF *destinations;
    p11wld_ulong destination_count;
    /* P11WLD_REPLICATE_* bits. */
    p11wld_ulong flags;
    /* The SO PIN: the one an initialized destination must accept, and the
     * one an uninitialized destination is initialized with. Not kept after
     * the call returns. */
    const unsigned char *so_pin;
    p11wld_ulong so_pin_len;
    /* The user PIN: the one the master and every initialized destination
     * must accept, and the one set on an uninitialized destination. */
    const unsigned char *user_pin;
    p11wld_ulong user_pin_len;
    /* Optional; NULL for none. */
    P11WLD_PROGRESS_CALLBACK progress;
    void *progress_context;
} P11WLD_REPLICATE_ARGS;

/* P11WLD_VERIFY_ARGS.flags */
/* Compare the members of the WLD slot wld_slot_id; master and others are
 * ignored. The first member in positional order is the reference. */
#define P11WLD_VERIFY_WLD_SLOT 0x1UL
/* Compare master with every other member of its WLD slot; others must be
 * NULL with other_count 0. */
#define P11WLD_VERIFY_ALL 0x2UL
/* With either flag, the comparison is rejected unless every configured
 * module is reachable (P11WLD_MODULE_UP) and every member of the slot is up
 * and found, because a member left out would pass unchecked. */

typedef struct P11WLD_VERIFY_ARGS {
    p11wld_ulong flags;
    /* With P11WLD_VERIFY_WLD_SLOT. */
    p11wld_ulong wld_slot_id;
    /* The reference token and the tokens compared with it. */
    P11WLD_SLOT_REF master;
    const P11WLD_SLOT_REF *others;
    p11wld_ulong other_count;
    /* The user PIN, so that private objects are compared too. */
    const unsigned char *user_pin;
    p11wld_ulong user_pin_len;
    P11WLD_PROGRESS_CALLBACK progress;
    void *progress_context;
} P11WLD_VERIFY_ARGS;

/* A report of one Replicate or Verify call, read with the GetReport*
 * functions and released with FreeReport. 0 names no report. */
typedef p11wld_ulong P11WLD_REPORT_HANDLE;

/* P11WLD_REPORT_INFO.kind */
#define P11WLD_REPORT_REPLICATE 1UL
#define P11WLD_REPORT_VERIFY 2UL

typedef struct P11WLD_REPORT_INFO {
    /* P11WLD_REPORT_REPLICATE or P11WLD_REPORT_VERIFY. */
    p11wld_ulong kind;
    /* The flags of the call. */
    p11wld_ulong flags;
    /* The code the call returned. */
    p11wld_rv status;
    /* Entries of GetReportTokens, GetReportActions and GetReportProblems. */
    p11wld_ulong token_count;
    p11wld_ulong action_count;
    p11wld_ulong problem_count;
    /* Token objects on the master (the reference, for Verify). */
    p11wld_ulong master_objects;
    /* Differences found by Verify (problems of kind P11WLD_PROBLEM_MISSING
     * to P11WLD_PROBLEM_KEY_DIFFERS); 0 for Replicate. */
    p11wld_ulong differences;
} P11WLD_REPORT_INFO;

/* P11WLD_TOKEN_REPORT.role */
#define P11WLD_ROLE_MASTER 1UL
#define P11WLD_ROLE_DESTINATION 2UL

/* P11WLD_TOKEN_REPORT.flags */
/* The run initialized the token (C_InitToken); in a dry run, the run
 * would. */
#define P11WLD_TOKEN_INITIALIZED_BY_RUN 0x1UL
/* The run set the user PIN (C_InitPIN); in a dry run, the run would. */
#define P11WLD_TOKEN_USER_PIN_SET 0x2UL
/* Every object of the master is in place on the token and every extra
 * object is removed (Replicate), or the token equals the reference
 * (Verify). */
#define P11WLD_TOKEN_COMPLETE 0x4UL
/* The run read the token's objects, so objects is their number; without
 * this flag it is 0 because the run stopped before. Since version 2.1. */
#define P11WLD_TOKEN_OBJECTS_READ 0x8UL

/* One token of a run. The counts of a dry run are the planned ones. */
typedef struct P11WLD_TOKEN_REPORT {
    /* P11WLD_ROLE_* */
    p11wld_ulong role;
    /* Position at the start of the run. */
    p11wld_ulong position;
    char module_name[P11WLD_MODULE_NAME_SIZE];
    /* Vendor slot id and serial at the end of the run: both can change
     * when the run initializes the token. */
    p11wld_ulong vendor_slot_id;
    char label[P11WLD_LABEL_SIZE];
    char serial[P11WLD_SERIAL_SIZE];
    /* P11WLD_TOKEN_* bits. */
    p11wld_ulong flags;
    /* Token objects found on the token at the start. */
    p11wld_ulong objects;
    /* Objects created from their attributes or unwrapped. */
    p11wld_ulong created;
    /* Objects that differed from the master's and were created anew, the
     * old one destroyed after the new one was in place. */
    p11wld_ulong replaced;
    /* Objects the master lacks, destroyed. */
    p11wld_ulong removed;
    /* Of created and replaced, the keys that travelled wrapped. */
    p11wld_ulong wrapped;
    /* Keys of the master left out because they cannot travel. */
    p11wld_ulong skipped;
    /* Objects already equal to the master's. */
    p11wld_ulong unchanged;
    /* Differences to the master (Verify, or left after Replicate). */
    p11wld_ulong differences;
    /* CKR_OK, or the code of the first problem on this token. */
    p11wld_rv status;
} P11WLD_TOKEN_REPORT;

/* P11WLD_ACTION.kind */
#define P11WLD_ACTION_CREATE 1UL
#define P11WLD_ACTION_REPLACE 2UL
#define P11WLD_ACTION_REMOVE 3UL

/* P11WLD_OBJECT_REF.type when an object has no key or certificate type. */
#define P11WLD_NO_TYPE (~0UL)

/* An object, named without revealing any of its values but its label and
 * id. */
typedef struct P11WLD_OBJECT_REF {
    /* CKA_CLASS */
    p11wld_ulong object_class;
    /* CKA_KEY_TYPE of a key, CKA_CERTIFICATE_TYPE of a certificate, else
     * P11WLD_NO_TYPE. */
    p11wld_ulong type;
    /* The first 64 bytes of CKA_LABEL, as the token stores them. */
    char label[P11WLD_OBJECT_LABEL_SIZE];
    /* The first 32 bytes of CKA_ID, and its full length. */
    unsigned char id[P11WLD_OBJECT_ID_SIZE];
    p11wld_ulong id_len;
} P11WLD_OBJECT_REF;

/* One object written, or to be written by a dry run. */
typedef struct P11WLD_ACTION {
    p11wld_ulong token_index;
    /* P11WLD_ACTION_* */
    p11wld_ulong kind;
    P11WLD_OBJECT_REF object;
    /* CK_TRUE when the key travels wrapped. */
    p11wld_ulong wrapped;
    /* CK_TRUE when the action was carried out, CK_FALSE when it was only
     * planned (dry run, or not reached). */
    p11wld_ulong done;
} P11WLD_ACTION;

/* P11WLD_PROBLEM.kind */
/* A slot reference names no slot or another token than expected, a WLD
 * slot id names no WLD slot, or a module or member is not reachable. */
#define P11WLD_PROBLEM_SLOT 1UL
/* A token's state forbids the run: master not initialized, a destination
 * with another label, the master among the destinations. */
#define P11WLD_PROBLEM_TOKEN 2UL
/* A token rejected a PIN. */
#define P11WLD_PROBLEM_PIN 3UL
/* A key cannot travel: CKA_EXTRACTABLE false, a wrap mechanism missing, an
 * object class or attribute that cannot be copied. */
#define P11WLD_PROBLEM_CANNOT_TRAVEL 4UL
/* A call failed while objects were written or read. */
#define P11WLD_PROBLEM_FAILED 5UL
/* A transport object could not be destroyed. */
#define P11WLD_PROBLEM_CLEANUP 6UL
/* Differences: an object of the master is missing on the token... */
#define P11WLD_PROBLEM_MISSING 7UL
/* ...the token has an object the master lacks... */
#define P11WLD_PROBLEM_EXTRA 8UL
/* ...an attribute differs (P11WLD_PROBLEM.attribute)... */
#define P11WLD_PROBLEM_ATTRIBUTE_DIFFERS 9UL
/* ...or the key material differs, found by the public key, a key check
 * value or a signature check. */
#define P11WLD_PROBLEM_KEY_DIFFERS 10UL
/* A sensitive key whose material could not be compared because no
 * mechanism allowed it. Not a difference. */
#define P11WLD_PROBLEM_NOT_COMPARED 11UL

/* P11WLD_PROBLEM.flags */
/* object is set. */
#define P11WLD_PROBLEM_HAS_OBJECT 0x1UL
/* The key was left out at the caller's request; the run goes on. */
#define P11WLD_PROBLEM_SKIPPED 0x2UL

typedef struct P11WLD_PROBLEM {
    /* Index in the report's token list, or P11WLD_NONE for the run. */
    p11wld_ulong token_index;
    /* P11WLD_PROBLEM_* kind. */
    p11wld_ulong kind;
    /* P11WLD_PROBLEM_* flag bits. */
    p11wld_ulong flags;
    /* The CKR_ code behind the problem, CKR_OK for differences. */
    p11wld_rv rv;
    P11WLD_OBJECT_REF object;
    /* The CKA_ type with P11WLD_PROBLEM_ATTRIBUTE_DIFFERS, else
     * P11WLD_NONE. */
    p11wld_ulong attribute;
    /* What went wrong, in one line. Never contains a PIN or key value.
     * A long message is cut to fit, so it can lose its end, where the
     * remedy is. GetReportProblemMessage returns the whole message. */
    char message[P11WLD_MESSAGE_SIZE];
} P11WLD_PROBLEM;

typedef struct P11WLD_FUNCTION_LIST {
    P11WLD_VERSION version;
    /* Fills in the version of the extension; works before C_Initialize. */
    p11wld_rv (*GetInfo)(P11WLD_VERSION *version);
    /* Lists every physical slot of every reachable module, in positional
     * order. A module that is not reachable (see GetModuleStatus) lists no
     * slot, so the positions after it shift. */
    p11wld_rv (*ListPhysicalSlots)(P11WLD_PHYSICAL_SLOT *slots,
                                   p11wld_ulong *count);
    /* Lists every member of every WLD slot with its health and load. */
    p11wld_rv (*GetMemberStatus)(P11WLD_MEMBER_STATUS *members,
                                 p11wld_ulong *count);
    /* Replicates the master to the destinations. Every slot reference,
     * label and PIN is checked on every token before anything is written.
     * Returns CKR_OK when every destination holds every object of the
     * master, else the code of the first problem. Examples:
     * CKR_ARGUMENTS_BAD (the master among the destinations, a destination
     * named twice), CKR_SLOT_ID_INVALID (a reference no longer matches),
     * CKR_TOKEN_NOT_RECOGNIZED (a destination has another label),
     * CKR_PIN_INCORRECT, CKR_KEY_UNEXTRACTABLE.
     * When a device fails during the writes (CKR_DEVICE_ERROR,
     * CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_SESSION_HANDLE_INVALID,
     * CKR_SESSION_CLOSED, or CKR_GENERAL_ERROR while C_GetSessionInfo fails
     * too), nothing more is written to it, or to any destination if it is
     * the master's. The failure is then one problem of kind
     * P11WLD_PROBLEM_FAILED, not one per object left.
     * Sets *report to a new report whenever the arguments were readable,
     * also on failure, and to 0 otherwise. Checking the SO PIN needs an SO
     * login, which a token rejects (CKR_SESSION_READ_ONLY_EXISTS) while the
     * calling process has read-only sessions on it, so call it from a
     * process that has none, such as the p11wld program. */
    p11wld_rv (*Replicate)(const P11WLD_REPLICATE_ARGS *args,
                           P11WLD_REPORT_HANDLE *report);
    /* Compares tokens without writing anything. Returns CKR_OK when the
     * tokens are equal, CKR_FUNCTION_FAILED when they differ (the
     * differences are in the report), or the code of the first problem
     * that stopped the comparison, for example CKR_ARGUMENTS_BAD for a
     * wld_slot_id that names no WLD slot. Sets *report as Replicate
     * does. */
    p11wld_rv (*Verify)(const P11WLD_VERIFY_ARGS *args,
                        P11WLD_REPORT_HANDLE *report);
    /* Reads a report's summary. */
    p11wld_rv (*GetReportInfo)(P11WLD_REPORT_HANDLE report,
                               P11WLD_REPORT_INFO *info);
    /* Lists a report's tokens: the master (the reference) first. */
    p11wld_rv (*GetReportTokens)(P11WLD_REPORT_HANDLE report,
                                 P11WLD_TOKEN_REPORT *tokens,
                                 p11wld_ulong *count);
    /* Lists the objects written or planned, in the order of writing. */
    p11wld_rv (*GetReportActions)(P11WLD_REPORT_HANDLE report,
                                  P11WLD_ACTION *actions,
                                  p11wld_ulong *count);
    /* Lists the problems and differences. */
    p11wld_rv (*GetReportProblems)(P11WLD_REPORT_HANDLE report,
                                   P11WLD_PROBLEM *problems,
                                   p11wld_ulong *count);
    /* Releases a report; its handle names nothing afterwards. */
    p11wld_rv (*FreeReport)(P11WLD_REPORT_HANDLE report);
    /* Lists every configured module, in configuration order, with whether
     * the calling process reaches it. */
    p11wld_rv (*GetModuleStatus)(P11WLD_MODULE_STATUS *modules,
                                 p11wld_ulong *count);
    /* Copies the whole message of the problem at `index` of the report's
     * problem list, NUL-terminated, by the two-call convention: *size is
     * its size in bytes with the NUL. Since version 2.1. */
    p11wld_rv (*GetReportProblemMessage)(P11WLD_REPORT_HANDLE report,
                                         p11wld_ulong index, char *message,
                                         p11wld_ulong *size);
} P11WLD_FUNCTION_LIST;

/* Sets *list to the extension's function list. */
p11wld_rv P11WLD_GetFunctionList(P11WLD_FUNCTION_LIST **list);

#ifdef __cplusplus
}
#endif

#endif /* P11WLD_H */
